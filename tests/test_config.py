"""params.yaml → typed Config: unknown keys, wrong types and out-of-range values fail clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskcl.cli import main
from maskcl.config import Config
from maskcl.errors import ConfigError


def test_defaults_are_the_authors_code_defaults() -> None:
    cfg = Config()
    assert (cfg.eps, cfg.eps_gap, cfg.k1, cfg.k2, cfg.min_samples, cfg.seed) == (0.6, 0.02, 30, 6, 4, 111)
    assert (cfg.train.lr, cfg.train.weight_decay, cfg.train.temp, cfg.train.momentum) == (3.5e-4, 5e-4, 0.05, 0.2)
    assert (cfg.train.batch_size, cfg.train.num_instances, cfg.train.step_size, cfg.train.epochs) == (64, 4, 20, 60)


def test_round_trip_through_dict() -> None:
    cfg = Config().replace(**{"eps": 0.55, "train.epochs": 3, "dataset.name": "ltcc"})
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert cfg.eps == 0.55 and cfg.train.epochs == 3 and cfg.dataset.name == "ltcc"


def test_int_written_for_a_float_key_is_cast() -> None:
    """`dvc exp run -S eps=1` writes an int into params.yaml."""
    cfg = Config.from_dict({"eps": 1, "train": {"lr": 1}})
    assert isinstance(cfg.eps, float) and cfg.eps == 1.0 and isinstance(cfg.train.lr, float)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"epz": 0.6}, "unknown key 'epz'"),
        ({"train": {"epoch": 3}}, "unknown key 'train.epoch'"),
        ({"eps": "wide"}, "'eps' must be a number"),
        ({"k1": 2.5}, "'k1' must be an integer"),
        ({"train": {"amp": "yes"}}, "'train.amp' must be a boolean"),
        ({"train": 3}, "'train' must be a mapping"),
        ({"eps": 0.0}, "'eps' is 0.0; expected a number > 0"),
        ({"eps": -0.1}, "'eps' is -0.1"),
        ({"k1": 5, "k2": 6}, "'k2' is 6; expected 1 <= k2 <= k1 (5)"),
        ({"train": {"batch_size": 30, "num_instances": 4}}, "'train.batch_size' is 30; expected a multiple of train.num_instances (4)"),
        ({"method": "sicl"}, "'method' is 'sicl'; expected one of maskcl, rgb"),
        ({"masks": {"source": "magic"}}, "'masks.source'"),
        ({"eps": 0.6, "eps_gap": 0.7}, "'eps_gap'"),
        ({"cluster": {"nprobe": 0}}, "'cluster.nprobe' is 0; expected an integer >= 1"),
        ({"cluster": {"nlist": -1}}, "'cluster.nlist' is -1"),
    ],
)
def test_bad_values_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data, source="params.yaml")
    assert message in str(info.value) and str(info.value).startswith("params.yaml:")


def test_yaml_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Config.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("eps: [0.6\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Config.from_yaml(bad)
    typo = tmp_path / "typo.yaml"
    typo.write_text("eps: 0.6\nk3: 2\n")
    with pytest.raises(ConfigError, match=f"{typo}: unknown key 'k3'"):
        Config.from_yaml(typo)


def test_cli_prints_one_line_and_exits_nonzero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("eps: -1\n")
    code = main(["synth", "--params", str(params), "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "'eps' is -1.0" in err and "Traceback" not in err


def test_cli_set_override_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["synth", "--params", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2 and "does not exist" in capsys.readouterr().err
    params = tmp_path / "p.yaml"
    params.write_text("seed: 1\n")
    code = main(["synth", "--params", str(params), "--set", "k2=99", "--out", str(tmp_path / "o")])
    assert code == 2 and "'k2' is 99" in capsys.readouterr().err


def test_params_yaml_has_no_duplicate_keys() -> None:
    """YAML keeps the last of two equal keys silently; `dvc exp run -S` would edit only one."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        keys = [loader.construct_object(key) for key, _ in node.value]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        assert not duplicates, f"params.yaml repeats {duplicates} (line {node.start_mark.line + 1})"
        return loader.construct_mapping(node)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    data = yaml.load(params.read_text(), Loader=StrictLoader)  # noqa: S506 - SafeLoader subclass
    assert Config.from_dict(data, source=str(params)).dataset.name == "synthetic"
