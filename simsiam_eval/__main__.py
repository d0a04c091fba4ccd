from simsiam_eval.cli import main

raise SystemExit(main())
