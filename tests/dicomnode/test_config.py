"""Configuration: embedded defaults, the shipped file, and one clear sentence per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import Config, ConfigError, Destination, load_config, with_overrides

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "dicomnode.toml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_file_states_exactly_the_embedded_defaults() -> None:
    assert load_config(SHIPPED) == Config()


def test_no_file_means_embedded_defaults() -> None:
    config = load_config(None)
    assert config.node.ae_title == "WRISTAI" and config.node.port == 11112


def test_a_file_overrides_and_parses_destinations(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        '[node]\nport = 104\n[[destinations]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 4242\n'
        '[storage]\npath = "spool/elsewhere"\n',
    )
    config = load_config(path)
    assert config.node.port == 104 and config.node.ae_title == "WRISTAI"
    assert config.destinations == (Destination("PACS", "10.0.0.5", 4242),)
    assert config.storage.path == Path("spool/elsewhere")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[node]\nprot = 1\n", "unknown key 'node.prot' (did you mean 'port'?)"),
        ("[nodes]\nport = 1\n", "unknown key 'nodes' (did you mean 'node'?)"),
        ('[node]\nport = "104"\n', "'node.port' must be an integer, not a string"),
        ("[node]\nport = true\n", "'node.port' must be an integer, not a boolean"),
        ("[node]\nport = 70000\n", "'node.port' = 70000 must be a TCP port"),
        ('[node]\nae_title = "A_TITLE_LONGER_THAN_16"\n', "'node.ae_title'"),
        ('[node]\nae_title = "BACK\\\\SLASH"\n', "'node.ae_title'"),
        ('[logging]\nlevel = "LOUD"\n', "'logging.level' must be one of"),
        ("[storage]\npath = 3\n", "'storage.path' must be a path (string), not an integer"),
        ('[[destinations]]\nae_title = "X"\nhost = "h"\n', "lacks the key 'destinations[0].port'"),
        ("node = 3\n", "[node] must be a table"),
        ("[completeness]\ngrace_seconds = -1\n", "'completeness.grace_seconds' = -1"),
        ("[completeness]\ngrace_seconds = 60\n", "must not exceed quiet_seconds"),
        ("[node\n", "not valid TOML"),
        (
            '[[destinations]]\nae_title = "P"\nhost = "http://pacs"\nport = 104\n',
            "'destinations[0].host' = 'http://pacs' must be a host name or an IP address",
        ),
        (
            '[[destinations]]\nae_title = "P"\nhost = "-pacs"\nport = 104\n',
            "'destinations[0].host' = '-pacs' must be a host name or an IP address",
        ),
    ],
)
def test_bad_values_name_the_key_and_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert message in str(exc.value)
    assert str(path) in str(exc.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.toml")


def test_overrides_are_validated_too() -> None:
    config = with_overrides(Config(), node={"port": 2000})
    assert config.node.port == 2000
    with pytest.raises(ConfigError, match=r"'node\.port' = 0"):
        with_overrides(Config(), node={"port": 0})


@pytest.mark.parametrize("text", ["PACS@host", "@h:1", "PACS@h:99999", "PACS@h:x"])
def test_destination_flag_syntax(text: str) -> None:
    with pytest.raises(ConfigError):
        Destination.parse(text)
    assert Destination.parse("PACS@127.0.0.1:4242") == Destination("PACS", "127.0.0.1", 4242)


@pytest.mark.parametrize("host", ["pacs", "pacs.example.org", "PACS_01.local", "10.0.0.5", "::1"])
def test_destination_hosts_that_are_names_or_addresses(host: str) -> None:
    assert Destination("PACS", host, 104).host == host


@pytest.mark.parametrize("host", ["pacs:104", "10.0.0.256", "pacs/x", "pa cs", "a..b"])
def test_destination_hosts_that_are_neither(host: str) -> None:
    with pytest.raises(ValueError, match="must be a host name or an IP address"):
        Destination("PACS", host, 104)
    # An empty host is no host: a DICOMweb destination has none (see test_stow.py).
    with pytest.raises(ValueError, match="lacks the key 'host'"):
        Destination("PACS", "", 104)


def test_analysis_workers_default_to_one_per_core_sharing_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dicomnode import config as config_module

    monkeypatch.setattr(config_module, "available_cores", lambda: 16)
    auto = Config().analysis
    assert auto.workers == 0 and auto.worker_count == 8 and auto.threads_per_worker == 2
    two = with_overrides(Config(), analysis={"workers": 2}).analysis
    assert two.worker_count == 2 and two.threads_per_worker == 8
    monkeypatch.setattr(config_module, "available_cores", lambda: 2)
    assert (Config().analysis.worker_count, Config().analysis.threads_per_worker) == (2, 1)
    many = with_overrides(Config(), analysis={"workers": 4}).analysis
    assert (many.worker_count, many.threads_per_worker) == (4, 1)
