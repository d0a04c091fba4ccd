#!/usr/bin/env python
"""Write the deterministic synthetic shapes data set (ImageFolder + Pascal VOC + COCO layouts)."""
import argparse

from simsiam_eval.data.shapes import CLASSES, ShapesSettings, write_shapes_dataset


def main() -> None:
    defaults = ShapesSettings()
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("output", help="folder to create (must not exist yet)")
    parser.add_argument("--train-per-class", type=int, default=defaults.train_per_class,
                        help="classification training images per class (default %(default)s)")
    parser.add_argument("--val-per-class", type=int, default=defaults.val_per_class,
                        help="classification validation images per class (default %(default)s)")
    parser.add_argument("--image-size", type=int, default=defaults.image_size,
                        help="side of the classification images in pixels (default %(default)s)")
    parser.add_argument("--detection-train", type=int, default=defaults.detection_train,
                        help="detection training scenes (default %(default)s)")
    parser.add_argument("--detection-val", type=int, default=defaults.detection_val,
                        help="detection validation scenes (default %(default)s)")
    parser.add_argument("--detection-size", type=int, default=defaults.detection_size,
                        help="side of the detection scenes in pixels (default %(default)s)")
    parser.add_argument("--no-detection", action="store_true", help="write only the classification split")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of every image (default %(default)s)")
    args = parser.parse_args()
    settings = ShapesSettings(args.train_per_class, args.val_per_class, args.image_size,
                              args.detection_train, args.detection_val, args.detection_size, args.seed)
    root = write_shapes_dataset(args.output, settings, detection=not args.no_detection)
    print(f"wrote {len(CLASSES)} classes ({', '.join(CLASSES)}) to {root}")


if __name__ == "__main__":
    main()
