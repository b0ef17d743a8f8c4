"""Manifests and CSV files are hostile input: alias bombs, duplicate keys, numbers and dates
out of range, and thousands of generated manifests. Every one is either accepted or refused
with ``Error: file:line: field: problem`` and exit 1, the database as it was.

In-process and on SQLite: what is tested here is the reading of files, not the backends."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from conftest import Cli, db_dump, fleet_yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignctl.errors import CampaignctlError
from campaignctl.manifests import load_campaign, load_fleet
from campaignctl.yamlfile import YamlDocument

# Values written as YAML source: what YAML turns them into is the point.
TOKENS = [
    "0",
    "-5",
    "1",
    "3",
    "600",
    "9" * 30,
    "-" + "9" * 25,
    "9" * 5000,
    "0x7fffffffffffffffffff",
    "1_000",
    "0o17",
    "1.5",
    "1e400",
    ".inf",
    "-.inf",
    ".nan",
    "1e-400",
    "true",
    "no",
    "on",
    "~",
    "null",
    "''",
    '""',
    "2024-01-01",
    "2024-02-30",
    "99999-01-01T00:00:00Z",
    "9999-12-31T23:59:59-23:59",
    "0001-01-01T00:00:00+23:59",
    "2024-01-01T00:00:00+99:00",
    "2030-01-01T00:00:00Z",
    "10m",
    "1h",
    "365d",
    "366d",
    "99999999999999999999d",
    "25%",
    "50%",
    "150%",
    "-1%",
    "1e400%",
    "eco",
    "sensor-0001",
    "sensor-v2",
    "broker",
    "mqtt",
    "pause",
    "abort",
    "'ümlaut ☃ 𝄞'",
    '"\\x1b[31mred\\x1b[0m"',
    '"\\u0000"',
    '"\\t\\r"',
    '"a\\u202eb"',
    "'[bold]x[/bold]'",
    "[]",
    "{}",
    "[1, [2, [3, [4]]]]",
    "{a: 1, a: 2}",
    "{1: a, '1': b}",
    "{true: a, 'true': b}",
    "{~: a, null: b}",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!python/object/apply:os.system [echo]",
    "!!int x",
    "!!float y",
    "!!timestamp z",
    "&x [*x]",
    "*nowhere",
    "&t {site: lyon}",
    "{<<: {a: 1}, b: 2}",
    "{<<: 3}",
    "[{a: 1}]",
]
KEYS = [
    "a",
    "mode",
    "1",
    "'1'",
    "true",
    "'true'",
    "null",
    "~",
    "<<",
    "[k]",
    "x.y",
    "$v",
    "'a b'",
    "name",
    "type",
    "tags",
    "batches",
    "batch_size",
    "on_error",
    "canary",
    "selector",
    "names",
    "devices",
]


class Raw(str):
    """A scalar written as is in the generated YAML."""


CAMPAIGN: dict[str, Any] = {
    "name": Raw("c1"),
    "description": Raw("'fuzzed'"),
    "devices": {
        "names": [Raw("sensor-0001"), Raw("sensor-0002")],
        "selector": {"type": Raw("sensor-v2"), "tags": {"site": Raw("lyon")}},
    },
    "configurations": {"mode": Raw("eco"), "level": Raw("3"), "nested": {"a": [Raw("1"), Raw("2")]}},
    "expected_state": {"mode": Raw("eco")},
    "start_at": Raw("2030-01-01T00:00:00Z"),
    "rollout": {
        "batches": [Raw("1"), Raw("50%")],
        "bake_time": Raw("10m"),
        "success_threshold": Raw("95%"),
        "error_threshold": Raw("5%"),
        "on_error": Raw("pause"),
        "max_per_minute": Raw("600"),
        "device_timeout": Raw("1h"),
        "canary": {"names": [Raw("sensor-0001")]},
    },
}
FLEET: dict[str, Any] = {
    "interfaces": {"broker": {"type": Raw("mqtt"), "url": Raw("mqtt://127.0.0.1:1"), "topic_prefix": Raw("fz")}},
    "device_types": {
        "sensor-v2": {"firmware_types": {"app": {"version_key": Raw("app_version"), "url_key": Raw("app_url")}}}
    },
    "devices": [
        {
            "name": Raw(f"sensor-000{i}"),
            "type": Raw("sensor-v2"),
            "interface": Raw("broker"),
            "tags": {"site": Raw("lyon"), "floor": Raw(str(i))},
        }
        for i in (1, 2)
    ],
}


def render(value: Any, indent: int = 0) -> str:
    """Block-style YAML of a tree whose leaves are Raw source text; keys are written as is."""
    pad = " " * indent
    if isinstance(value, dict):
        if not value:
            return f"{pad}{{}}\n"
        return "".join(
            f"{pad}{key}:\n{render(item, indent + 2)}" if _nested(item) else f"{pad}{key}: {item}\n"
            for key, item in value.items()
        )
    if isinstance(value, list):
        if not value:
            return f"{pad}[]\n"
        return "".join(f"{pad}-\n{render(item, indent + 2)}" if _nested(item) else f"{pad}- {item}\n" for item in value)
    return f"{pad}{value}\n"


def _nested(value: Any) -> bool:
    return isinstance(value, (dict, list)) and bool(value)


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _paths(item, path + (index,))
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


def mutated(rnd: random.Random, base: dict[str, Any]) -> str:
    """``base`` with a few random edits: values replaced by tricky ones, keys added (or added
    twice), entries dropped; then, sometimes, the text itself damaged.

    Driven by one seed that hypothesis draws: generating each edit as a hypothesis draw
    cost ten times the loading it tests."""
    tree = _copy(base)
    for _ in range(rnd.randint(1, 4)):
        path = rnd.choice(_paths(tree))
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        target = parent[path[-1]] if path else tree
        op = rnd.choice(["replace", "replace", "add", "twice", "drop", "nest"])
        token = Raw(rnd.choice(TOKENS))
        if op == "twice" and isinstance(target, dict) and target:
            # An existing key again on the next line of the same mapping.
            first = rnd.choice(list(target))
            target[f"{first}:\n{'  ' * len(path)}{first}"] = token
        elif op in ("add", "twice") and isinstance(target, dict):
            target[rnd.choice(KEYS + list(target))] = token
        elif op == "add" and isinstance(target, list):
            target.append(token)
        elif op == "drop" and path:
            del parent[path[-1]]
        elif op == "nest" and path:
            parent[path[-1]] = {rnd.choice(KEYS): token}
        elif path:
            parent[path[-1]] = token
    text = render(tree)
    if rnd.randrange(10) == 0:  # damage the text itself
        at = rnd.randrange(len(text) + 1)
        text = (
            text[:at]
            + "".join(chr(rnd.choice([rnd.randrange(32), rnd.randrange(32, 0x3000)])) for _ in range(rnd.randint(1, 4)))
            + text[at:]
        )
    return text


CSV_CELLS = [
    "sensor-0001",
    "sensor-0009",
    "sensor-v2",
    "broker",
    "nowhere",
    "",
    "a b",
    "site=lyon",
    "site=lyon;site=paris",
    "site",
    "=x",
    "k=v;;k2=v2",
    '"x,y"',
    '"unclosed',
    "ü☃",
    "\x1b[31m",
    "a\x00b",
]


def csv_file(rnd: random.Random) -> str:
    header = [rnd.choice(["name", "type", "interface", "tags", "colour"]) for _ in range(rnd.randint(1, 5))]
    if rnd.random() < 0.5:
        header = ["name", "type", "interface", "tags"][: rnd.randint(3, 4)]
    rows = [[rnd.choice(CSV_CELLS) for _ in range(rnd.randint(1, 6))] for _ in range(rnd.randint(0, 4))]
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


def generated(seed: int, directory: Path) -> tuple[str, Path]:
    """A manifest of a random kind (campaign, fleet, CSV fleet), written in ``directory``."""
    rnd = random.Random(seed)
    kind = rnd.choice(["campaign", "fleet", "csv"])
    if kind == "csv":
        text, path = csv_file(rnd), directory / "f.csv"
    else:
        text, path = mutated(rnd, CAMPAIGN if kind == "campaign" else FLEET), directory / "f.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    return kind, path


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for thousands of small files: in memory when the machine has /dev/shm."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        yield tmp_path
        return
    directory = Path(tempfile.mkdtemp(dir=shm))
    yield directory
    shutil.rmtree(directory)


def _load(kind: str, path: Path) -> None:
    """Read a manifest; only a domain error may come out."""
    try:
        if kind == "campaign":
            load_campaign(str(path), environ={})
        else:
            load_fleet(str(path))
    except CampaignctlError as exc:
        assert str(exc).startswith(str(path)), str(exc)  # every message names the file


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_generated_manifests_load_or_fail_cleanly(seed: int, scratch: Path) -> None:
    kind, path = generated(seed, scratch)
    _load(kind, path)


@pytest.fixture
def sqlite_cli(cli_for: type[Cli], tmp_path: Path) -> Cli:
    """A CLI on a fresh SQLite database holding two sensors."""
    cli = cli_for(str(tmp_path / "fuzz.db"))
    fleet = tmp_path / "base-fleet.yaml"
    fleet.write_text(fleet_yaml("mqtt://127.0.0.1:1", "fz", devices=2))
    cli("devices", "import", str(fleet))
    return cli


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_generated_manifests_through_the_cli(seed: int, sqlite_cli: Cli, scratch: Path) -> None:
    kind, path = generated(seed, scratch)
    before = db_dump(sqlite_cli.db_url)
    args = ["apply", "-f", str(path)] if kind == "campaign" else ["devices", "import", str(path)]
    result = sqlite_cli(*args, code=None)
    assert result.exit_code in (0, 1), (result.exit_code, result.stdout, result.stderr, path.read_text())
    assert "Traceback" not in result.stdout + result.stderr
    if result.exit_code == 1:
        assert result.stderr.startswith(f"Error: {path}"), result.stderr
        assert db_dump(sqlite_cli.db_url) == before


JSON_LIKE = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None)
@given(value=JSON_LIKE, flow=st.booleans())
def test_loader_reads_what_pyyaml_reads(value: Any, flow: bool) -> None:
    """The fast loader gives what PyYAML's safe loader gives, for documents without the
    duplicate keys it refuses."""
    text = yaml.safe_dump({"v": value}, default_flow_style=flow, allow_unicode=True)
    assert YamlDocument(text, "t.yaml").data == yaml.safe_load(text)


@settings(max_examples=300, deadline=None)
@given(
    scalar=st.from_regex(r"[-+]?0[0-9_]{1,5}", fullmatch=True)
    | st.text(alphabet="0123456789_-+.:xobeE", min_size=1, max_size=8)
)
def test_plain_scalars_are_never_misread(scalar: str) -> None:
    """Numbers written by hand (leading zeros are YAML 1.1 octal, underscores, signs,
    sexagesimal): what the fast loader accepts, it reads as PyYAML's safe loader does."""
    text = f"v: {scalar}\n"
    try:
        got = YamlDocument(text, "t.yaml").data
    except CampaignctlError:
        return  # refused with a clean error: never a silent misread
    assert got == yaml.safe_load(text)


DEVICE_PARTS = st.sampled_from(["sensor-0001", "sensor-v2", "broker", "", "a b", "x/y", "site", "a.b", "é", "-x"])
DEVICE_VALUES = DEVICE_PARTS | st.integers() | st.floats() | st.booleans() | st.none() | st.just([]) | st.just({})


@settings(max_examples=150, deadline=None)
@given(
    data=st.dictionaries(
        st.sampled_from(["name", "type", "interface", "tags", "colour"]),
        DEVICE_VALUES | st.dictionaries(DEVICE_PARTS | st.integers(), DEVICE_VALUES, max_size=3),
        max_size=5,
    )
)
def test_quick_device_check_agrees_with_the_model(data: dict[str, Any]) -> None:
    """Large imports check devices without building DeviceSpec models: same verdict, same value."""
    from pydantic import ValidationError

    from campaignctl.manifests import Device, DeviceSpec, _plain_device

    quick = _plain_device(data, set())
    try:
        spec = DeviceSpec.model_validate(data)
    except ValidationError:
        assert quick is None
    else:
        assert quick in (None, Device(spec.name, spec.type, spec.interface, spec.tags))


def _bomb(levels: int = 9, indent: str = "  ") -> str:
    lines = [f"{indent}l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, levels):
        lines.append(f"{indent}l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "kind, text, field, line",
    [
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  deep:\n    deeper:\n"
            + _bomb(indent="      "),
            "configurations.deep.deeper.l5",
            11,
        ),
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\nrollout:\n  canary:\n"
            "    tags:\n" + _bomb(indent="      "),
            "rollout.canary.tags.l5",
            12,
        ),
        (
            "fleet",
            "devices:\n  - name: d1\n    type: t\n    interface: i\n    tags:\n" + _bomb(indent="      "),
            "devices[0].tags.l5",
            11,
        ),
    ],
)
def test_alias_bomb_is_refused_at_once(
    kind: str, text: str, field: str, line: int, sqlite_cli: Cli, tmp_path: Path
) -> None:
    assert len(text) < 700
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    started = time.perf_counter()
    tracemalloc.start()
    try:
        with pytest.raises(CampaignctlError) as caught:
            load_campaign(str(path)) if kind == "campaign" else load_fleet(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused without expanding it: the bomb holds 9**9 (387 million) values, gigabytes
    # once expanded, and nothing like that was built. The time bound only catches a
    # loader gone quadratic, with room for a loaded machine.
    assert time.perf_counter() - started < 5.0
    assert peak < 5_000_000, peak
    message = str(caught.value)
    assert message.startswith(f"{path}:{line}: {field}: aliases expand {field} to more values than allowed")
    held = int(message.split("the document would hold ")[1].split(" values")[0].replace(",", ""))
    assert held > 9**9
    before = db_dump(sqlite_cli.db_url)
    result = sqlite_cli(*(["create", "-f"] if kind == "campaign" else ["devices", "import"]), str(path), code=1)
    assert "an alias bomb?" in result.stderr
    assert db_dump(sqlite_cli.db_url) == before


def test_aliases_that_share_values_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "devices:\n  - {name: d0, type: t, interface: i, tags: &t {site: lyon, ring: main}}\n"
        + "".join(f"  - {{name: d{i}, type: t, interface: i, tags: *t}}\n" for i in range(1, 2000))
    )
    fleet = load_fleet(str(path))
    assert len(fleet.devices) == 2000 and fleet.devices[-1].tags == {"site": "lyon", "ring": "main"}


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  mode: eco\n  level: 3\n  mode: off\n",
            "c.yaml:6: configurations.mode: key 'mode' is given twice (lines 4 and 6)",
        ),
        (
            "campaign",
            (
                "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  a:\n    - {b: 1, c: 2}\n"
                "    - {b: 1, c: 2, b: 3}\n"
            ),
            "c.yaml:6: configurations.a[1].b: key 'b' is given twice (lines 6 and 6)",
        ),
        (
            "campaign",
            "name: x\nname: y\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\n",
            "c.yaml:2: name: key 'name' is given twice (lines 1 and 2)",
        ),
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  v:\n    1: one\n    '1': uno\n",
            "c.yaml:6: configurations.v.1: key '1' is given twice: as 1 (int) on line 5 and as '1' on line 6",
        ),
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  v: {true: a, 'true': b}\n",
            "c.yaml:4: configurations.v.true: key 'true' is given twice: as true (bool) on line 4 and as 'true' on line 4",
        ),
        (
            "campaign",
            "name: x\ndevices: {names: [sensor-0001]}\nconfigurations:\n  v: {null: a, ~: b}\n",
            "c.yaml:4: configurations.v.null: key 'null' is given twice (lines 4 and 4)",
        ),
        (
            "fleet",
            "devices:\n  - name: d1\n    type: t\n    tags: {site: a}\n    interface: i\n    tags: {site: b}\n",
            "f.yaml:6: devices[0].tags: key 'tags' is given twice (lines 4 and 6)",
        ),
        (
            "fleet",
            "device_types:\n  t: {}\ninterfaces: {}\ndevice_types:\n  u: {}\n",
            "f.yaml:4: device_types: key 'device_types' is given twice (lines 1 and 4)",
        ),
    ],
)
def test_duplicate_keys_name_the_key_and_both_lines(kind: str, text: str, expected: str, tmp_path: Path) -> None:
    path = tmp_path / ("c.yaml" if kind == "campaign" else "f.yaml")
    path.write_text(text)
    with pytest.raises(CampaignctlError) as caught:
        load_campaign(str(path)) if kind == "campaign" else load_fleet(str(path))
    assert str(caught.value).startswith(f"{tmp_path}/{expected}"), str(caught.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("name,type,interface,name\nd1,t,i,d2\n", "devices.csv:1: column(s) given twice: name"),
        (
            "name,type,interface,tags\nd1,t,i,site=lyon;floor=3;site=paris\n",
            "devices.csv:2: tags: tag 'site' is given twice",
        ),
    ],
)
def test_csv_duplicates_are_errors(text: str, expected: str, sqlite_cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "devices.csv"
    path.write_text(text)
    before = db_dump(sqlite_cli.db_url)
    assert sqlite_cli("devices", "import", str(path), code=1).stderr.startswith(f"Error: {tmp_path}/{expected}")
    assert db_dump(sqlite_cli.db_url) == before


_RANGE_BASE = "name: x\ndevices: {names: [sensor-0001]}\nconfigurations: {a: 1}\n"


@pytest.mark.parametrize(
    "extra, expected",
    [
        (
            "rollout:\n  batch_size: 100000000000000000000000\n",
            "c.yaml:5: rollout.batch_size: input should be less than or equal to 1000000000",
        ),
        (
            "rollout:\n  max_per_minute: 99999999999999999999\n",
            "c.yaml:5: rollout.max_per_minute: input should be less than or equal to 1000000000",
        ),
        (
            "rollout:\n  batches: [10, 100000000000000000000000000]\n",
            "c.yaml:5: rollout.batches: a batch of 100000000000000000000000000 is more than 1,000,000,000",
        ),
        ("rollout:\n  bake_time: .inf\n", "c.yaml:5: rollout.bake_time: inf is longer than 365d, the longest duration"),
        (
            "rollout:\n  device_timeout: 99999999999999999999d\n",
            "c.yaml:5: rollout.device_timeout: '99999999999999999999d' is longer than 365d",
        ),
        ("rollout:\n  bake_time: " + "9" * 400 + "\n", "c.yaml:5: rollout.bake_time: 9999999999"),
        (
            "rollout:\n  success_threshold: .nan\n",
            "c.yaml:5: rollout.success_threshold: nan is not between 0% and 100%",
        ),
        ("rollout:\n  batches: ['1e400%']\n", "c.yaml:5: rollout.batches: '1e400%' is not between 0% and 100%"),
        (
            "start_at: 9999-12-31T23:59:59-23:59\n",
            "c.yaml:4: start_at: 9999-12-31T23:59:59-23:59 is out of range: in UTC it falls outside the years 1 to 9999",
        ),
        ("start_at: 0001-01-01T00:00:00+23:59\n", "c.yaml:4: start_at: 0001-01-01T00:00:00+23:59 is out of range"),
        (
            "start_at: 99999-01-01T00:00:00Z\n",
            "c.yaml:4: start_at: '99999-01-01T00:00:00Z' is not an ISO 8601 date-time",
        ),
        (
            "expected_state:\n  until: 2024-02-30\n",
            "c.yaml:5: expected_state.until: '2024-02-30' is not a valid date (day is out of range for month)",
        ),
        (
            "expected_state:\n  at: 2024-01-01T00:00:00+99:00\n",
            "c.yaml:5: expected_state.at: '2024-01-01T00:00:00+99:00' is not a valid date",
        ),
        (
            "expected_state:\n  n: " + "9" * 5000 + "\n",
            (
                "c.yaml:5: expected_state.n: '9999999999999999999999999999999999999999…' is not a valid integer "
                "(5000 digits is too many)"
            ),
        ),
    ],
)
def test_numbers_and_dates_out_of_range(extra: str, expected: str, tmp_path: Path) -> None:
    # In-process: the command line's part (exit 1, database unchanged) is the same for every
    # manifest error, and test_generated_manifests_through_the_cli checks it.
    path = tmp_path / "c.yaml"
    path.write_text(_RANGE_BASE + extra)
    with pytest.raises(CampaignctlError) as caught:
        load_campaign(str(path), environ={})
    assert str(caught.value).startswith(f"{tmp_path}/{expected}"), str(caught.value)
