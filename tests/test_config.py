import pytest

from simsiam_eval.config import load_config, save_config
from simsiam_eval.errors import UserError

DEFAULTS = {"epochs": 100, "output_dir": "runs", "flag": True, "optim": {"base_lr": 0.05, "weight_decay": 1e-4},
            "data": {"train": ""}}


def write(path, text):
    path.write_text(text)
    return path


def test_base_chain_then_overrides(tmp_path):
    write(tmp_path / "base.yaml", "epochs: 10\noptim:\n  base_lr: 0.1\n  weight_decay: 5e-4\n")
    child = write(tmp_path / "child.yaml", "_BASE_: base.yaml\nepochs: 20\ndata:\n  train: cifar10:/d\n")
    cfg = load_config(child, DEFAULTS, ["optim.base_lr=0.3", "flag=false"])
    assert cfg.epochs == 20                      # child beats base
    assert cfg.optim.base_lr == 0.3              # command line beats files
    assert cfg.optim.weight_decay == 5e-4        # YAML's "5e-4" string is coerced to the default's float type
    assert cfg.flag is False
    assert cfg.data.train == "cifar10:/d"
    assert cfg.output_dir == "runs"              # untouched default


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, DEFAULTS, ["epochs=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml", DEFAULTS) == cfg


@pytest.mark.parametrize("override, message", [
    (["optim.lr=0.1"], "unknown config key 'optim.lr' (command line); did you mean 'optim.base_lr'?"),
    (["epochs=ten"], "config key 'epochs' (command line): expected an integer, got 'ten'"),
    (["flag=maybe"], "config key 'flag' (command line): expected true/false, got 'maybe'"),
    (["optim=1"], "config key 'optim' (command line) is a section; set one of its keys"),
    (["epochs"], "override 'epochs' is not of the form key=value"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError) as info:
        load_config(None, DEFAULTS, override)
    assert str(info.value) == message


def test_unknown_key_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path / "bad.yaml", "optim:\n  momentum: 0.9\n")
    with pytest.raises(UserError, match=r"unknown config key 'optim.momentum' \(.*bad.yaml\)"):
        load_config(path, DEFAULTS)


def test_base_loop_and_missing_file(tmp_path):
    write(tmp_path / "a.yaml", "_BASE_: b.yaml\n")
    write(tmp_path / "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(UserError, match="loops back"):
        load_config(tmp_path / "a.yaml", DEFAULTS)
    with pytest.raises(UserError, match="config file not found: nope.yaml"):
        load_config("nope.yaml", DEFAULTS)


def test_packaged_presets_resolve_against_pretrain_defaults():
    from pretrain.defaults import PRETRAIN_DEFAULTS

    cfg = load_config("pretrain/shapes_cpu", PRETRAIN_DEFAULTS)
    assert (cfg.model.arch, cfg.model.stem, cfg.model.proj_layers) == ("resnet18", "cifar", 2)  # from cifar base
    assert cfg.optim.weight_decay == 5e-4 and cfg.data.blur is False
    imagenet = load_config("pretrain/imagenet_r50", PRETRAIN_DEFAULTS)
    assert (imagenet.optim.base_lr, imagenet.batch_size, imagenet.model.proj_layers) == (0.05, 512, 3)


def test_user_file_bases_on_a_packaged_preset_and_own_file_wins(tmp_path, monkeypatch):
    from pretrain.defaults import PRETRAIN_DEFAULTS

    monkeypatch.chdir(tmp_path)
    write(tmp_path / "mine.yaml", "_BASE_: pretrain/shapes_cpu\nepochs: 3\n")
    cfg = load_config("mine.yaml", PRETRAIN_DEFAULTS)
    assert cfg.epochs == 3 and cfg.model.arch == "resnet18"        # the rest from the packaged chain
    (tmp_path / "pretrain").mkdir()
    write(tmp_path / "pretrain" / "shapes_cpu.yaml", "epochs: 7\n")  # the user's own file of that name
    assert load_config("pretrain/shapes_cpu.yaml", PRETRAIN_DEFAULTS).epochs == 7


def test_presets_come_from_the_installed_package_when_it_ships_them(tmp_path, monkeypatch):
    import simsiam_eval.config as config

    assert config.packaged_config_dir() == config.SOURCE_TREE_CONFIGS   # source checkout: no package copy
    (tmp_path / "configs" / "pretrain").mkdir(parents=True)
    write(tmp_path / "configs" / "pretrain" / "tiny.yaml", "epochs: 2\n")
    monkeypatch.setattr(config, "files", lambda package: tmp_path)      # a wheel's simsiam_eval folder
    assert config.packaged_config_dir() == tmp_path / "configs"
    assert load_config("pretrain/tiny", DEFAULTS).epochs == 2
