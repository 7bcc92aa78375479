"""Fleet pieces that need no etcd: match terms, tokens in the busid field, settings, the optional client."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from usbwire import UsbwireError, load_config
from usbwire.fleet import DeviceRecord, FleetError, FleetOptions, Match
from usbwire.fleet.keys import MAX_BUSID, import_busid, new_token, split_busid, token_hash, token_matches
from usbwire.protocol.pdu import OpReqImport

KEYBOARD = DeviceRecord(
    server="rack-a-1",
    address="10.1.2.3:3240",
    busid="1-2",
    vid_pid="1209:0003",
    product="Emulated keyboard",
    serial="KBD0001",
    labels={"rack": "a", "os": "none"},
)


@pytest.mark.parametrize(
    ("terms", "matches"),
    [
        pytest.param(["1209:0003"], True, id="vid-pid"),
        pytest.param(["product=Emulated keyboard"], True, id="product"),
        pytest.param(["1209:0001"], False, id="other-vid-pid"),
        pytest.param(["serial=KBD0001"], True, id="serial"),
        pytest.param(["label=rack=a"], True, id="label"),
        pytest.param(["label=rack=b"], False, id="other-label-value"),
        pytest.param(["label=room=a"], False, id="absent-label"),
        pytest.param(["1209:0003", "label=rack=a", "server=rack-a-1"], True, id="all-terms-hold"),
        pytest.param(["1209:0003", "serial=KBD0002"], False, id="one-term-fails"),
    ],
)
def test_match_terms_must_all_hold(terms: list[str], matches: bool) -> None:
    assert Match.parse(terms).matches(KEYBOARD) is matches


@pytest.mark.parametrize("term", ["1209", "serial=", "label=rack", "label==a", "colour=red", "12g9:0001"])
def test_match_rejects_malformed_terms(term: str) -> None:
    with pytest.raises(FleetError, match="bad match"):
        Match.parse([term])


def test_device_address_splits_into_host_and_port() -> None:
    assert (KEYBOARD.host, KEYBOARD.port) == ("10.1.2.3", 3240)
    v6 = DeviceRecord(server="s", address="[fd00::7]:3240", busid="1-1", vid_pid="1209:0001")
    assert (v6.host, v6.port) == ("fd00::7", 3240)


def test_token_fits_the_import_busid_field_with_the_longest_registered_busid() -> None:
    token = new_token()
    field = import_busid("9" * MAX_BUSID, token)
    OpReqImport(busid=field)  # 31 bytes and a NUL: the codec accepts it
    assert split_busid(field) == ("9" * MAX_BUSID, token)
    assert split_busid("1-1") == ("1-1", None)
    assert split_busid("1-1#") == ("1-1", "")


def test_only_the_hash_of_a_token_is_kept_and_it_checks_the_token() -> None:
    token = new_token()
    stored = token_hash(token)
    assert token not in stored
    assert token_matches(token, stored)
    assert not token_matches(token[:-1] + ("A" if token[-1] != "A" else "B"), stored)


def test_serve_with_fleet_but_without_the_etcd_client_says_what_to_install() -> None:
    # Hide aetcd as if usbwire[fleet] were not installed.
    script = (
        "import sys; sys.modules['aetcd'] = None\n"
        "from usbwire.cli import main\n"
        "sys.exit(main(['serve', '--host', '127.0.0.1', '--port', '0', '--control', 'none',"
        " '--fleet', 'etcd://127.0.0.1:1']))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False)
    assert (result.returncode, result.stderr.splitlines()[-1]) == (
        1,
        "usbwire: error: fleet mode needs the etcd client: pip install 'usbwire[fleet]'",
    )


def test_config_file_fleet_table_becomes_fleet_options(tmp_path: Path) -> None:
    config = tmp_path / "usbwire.toml"
    config.write_text(
        '[fleet]\nurl = "etcd://etcd1:2379"\nname = "rack-a-3"\nttl = 4\nlabels = { rack = "a", board = "imx8" }\n'
    )
    fleet = load_config(config)["fleet"]
    assert fleet == FleetOptions("etcd://etcd1:2379", "rack-a-3", None, {"rack": "a", "board": "imx8"}, 4)
    config.write_text('[fleet]\nurl = "etcd://etcd1:2379"\ncolour = "red"\n')
    with pytest.raises(UsbwireError, match=r"unknown settings fleet\.colour"):
        load_config(config)
