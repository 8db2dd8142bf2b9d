"""The CLI's parameter types (fleet.cli.options) refuse bad values in one line, and the commands do the sensible,
bounded thing with odd but well-typed input (no NATS needed: everything here fails, or succeeds, before connecting).

Table-driven: each row is a value and what must happen to it. tests/unit/test_cli_fuzz.py throws random values at
every command; this file pins the decisions (which values are accepted, what the message says)."""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.cli import options
from fleet.cli.agent_cmds import tail
from fleet.cli.main import cli, one_line
from fleet.errors import EXIT_ERROR, EXIT_USAGE, InvalidRequest
from tests.conftest import wait_for

SCHEMA = Path(__file__).resolve().parents[2] / "fleet" / "schema" / "fleet.schema.json"
EXAMPLE = Path(__file__).resolve().parents[2] / "fleet.yaml.example"


def convert(t: click.ParamType, value: str):
    return t.convert(value, None, None)


def refused(t: click.ParamType, value: str) -> str:
    with pytest.raises(click.BadParameter) as caught:
        convert(t, value)
    message = caught.value.format_message()
    assert "\n" not in message and "\u202e" not in message, message
    return message


@pytest.fixture
def closed_port():
    """A loopback port nothing listens on (bound, never listening), so that a command that does connect fails
    at once."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, list(args), env={"CI": "1", **(env or {})}, prog_name="fleet",
                                  catch_exceptions=False)
    finally:
        os.chdir(old)


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if not ln.startswith("warning: ")]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
    assert len(lines) == 1 or lines[1].startswith("hint: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize("value, expected", [("0.1", 0.1), ("3", 3.0), (" 2.5 ", 2.5), ("600", 600.0), ("1e2", 100.0)])
def test_seconds_accepts(value: str, expected: float) -> None:
    assert convert(options.CONNECT_TIMEOUT, value) == expected


@pytest.mark.parametrize("value, words", [
    ("nan", "not a finite number"),  # click's FloatRange lets nan through: every comparison with nan is false
    ("-nan", "not a finite number"), ("inf", "not a finite number"), ("1e400", "not a finite number"),
    ("-1", "not in the range"), ("0", "not in the range"), ("0.05", "not in the range"),
    ("601", "not in the range"), ("1e308", "not in the range"), ("", "not a valid float"),
    ("abc", "not a valid float"), ("5m", "not a valid float"), ("1" * 200, "not a number"),
])
def test_seconds_refuses(value: str, words: str) -> None:
    assert words in refused(options.CONNECT_TIMEOUT, value)


def test_open_lower_bound() -> None:
    up_timeout = options.Seconds(0, 3600, min_open=True)
    assert convert(up_timeout, "0.001") == 0.001
    assert "not in the range" in refused(up_timeout, "0")


@pytest.mark.parametrize("value", ["-5", "1000001", "1000000000000", "9" * 5000, "1e3", "nan", "", "1.5"])
def test_count_refuses(value: str) -> None:
    refused(options.Count(0, 1_000_000), value)


def test_count_accepts_its_bounds() -> None:
    assert convert(options.Count(0, 1_000_000), "0") == 0
    assert convert(options.Count(0, 1_000_000), "1000000") == 1_000_000


# ------------------------------------------------------------------------------------------------ NATS URLs


@pytest.mark.parametrize("value, expected", [
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    (" nats://127.0.0.1:4222 ", "nats://127.0.0.1:4222"),
    ("tls://nats.example.com:4443", "tls://nats.example.com:4443"),
    ("127.0.0.1:4222", "127.0.0.1:4222"),
    ("localhost", "localhost"),
    ("nats://user:pw@10.0.0.1:4222", "nats://user:pw@10.0.0.1:4222"),
    ("nats://[::1]:4222", "nats://[::1]:4222"),
    ("NATS://A.example:1", "NATS://A.example:1"),
    ("nats://a:1, nats://b:2,", "nats://a:1,nats://b:2"),
])
def test_nats_url_accepts(value: str, expected: str) -> None:
    assert convert(options.NatsUrl(), value) == expected


@pytest.mark.parametrize("value, words", [
    ("", "no server URL"), (" , ,", "no server URL"),
    ("nats://127.0.0.1:0", "port 0 is out of range"), ("nats://127.0.0.1:65536", "port 65536 is out of range"),
    ("nats://127.0.0.1:99999", "out of range"), ("nats://127.0.0.1:abc", "port 'abc' is not a number"),
    ("nats://127.0.0.1:-1", "not a number"), ("nats://127.0.0.1:", "empty port"),
    ("nats://h:1:2", "is not :PORT"), ("http://127.0.0.1:4222", "scheme 'http'"), ("foo://x:y", "scheme 'foo'"),
    ("nats://", "no host"), ("nats://:4222", "no host"), ("nats://a b:1", "space or a control"),
    ("nats://127.0.0.1:4222/path", "no path"), ("nats://h:1?q=1", "no path"),
    ("nats://[::1:4222", "not a URL"), ("nats://[zz]:1", "not a URL"), ("nats://[v1.x]:1", "not an IPv6 address"),
    ("nats://999.999.999.999:1", "not an IPv4 address"), ("nats://-bad-:1", "not a host name"),
    ("nats://ü.example:1", "not a host name"), ("nats://\u202eexample:1", "control"),
    ("nats://a:1,nats://b:0", "port 0"), ("nats://ok:1\nnats://x", "control"),
])
def test_nats_url_refuses(value: str, words: str) -> None:
    assert words in refused(options.NatsUrl(), value)


def test_nats_url_messages_never_show_a_password() -> None:
    message = refused(options.NatsUrl(), "nats://alice:s3cret@127.0.0.1:0")
    assert "s3cret" not in message and "***@" in message


# ------------------------------------------------------------------------------------------------ paths


@pytest.fixture
def place(tmp_path: Path) -> Path:
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "to-null").symlink_to("/dev/null")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    return tmp_path


@pytest.mark.parametrize("name, words", [
    ("/proc/fleet-x", "under /proc"), ("/sys/fleet-x", "under /sys"), ("/dev/null", "under /dev"),
    ("/dev/stdout", "under /dev"), ("{p}/to-null", "under /dev"),  # a symlink to a device is followed
    ("{p}/missing/x.json", "does not exist"), ("{p}/file/x", "Not a directory"), ("{p}/dir", "is a directory"),
    ("{p}/fifo", "not a regular file"), ("{p}/loop", "symbolic links"), ("", "empty path"),
    ("{p}/" + "n" * 300, "longer than 255 bytes"), ("~nobody-fleet-x/x", "no such user"),
])
def test_output_file_refuses(place: Path, name: str, words: str) -> None:
    assert words in refused(options.OutputFile(), name.replace("{p}", str(place)))


def test_output_file_accepts(place: Path) -> None:
    assert convert(options.OutputFile(), f"{place}/file") == place / "file"
    assert convert(options.OutputFile(), f"{place}/new.json") == place / "new.json"
    assert convert(options.OutputFile(stdout=True), "-") is options.STDOUT
    assert convert(options.OutputFile(stdout=True), "/dev/stdout") is options.STDOUT


@pytest.mark.parametrize("name, words", [
    ("{p}/missing", "No such file"), ("{p}/dir", "is a directory"), ("/dev/zero", "not a regular file"),
    ("/dev/urandom", "not a regular file"), ("{p}/fifo", "not a regular file"), ("{p}/big", "larger than 10 bytes"),
    ("", "empty path"),
])
def test_input_file_refuses(place: Path, name: str, words: str) -> None:
    (place / "big").write_text("x" * 11)
    assert words in refused(options.InputFile(max_bytes=10), name.replace("{p}", str(place)))


def test_input_file_takes_a_fifo_only_when_asked(place: Path) -> None:
    assert convert(options.InputFile(max_bytes=10, fifo=True), f"{place}/fifo") == place / "fifo"
    assert convert(options.InputFile(max_bytes=10), f"{place}/file") == place / "file"


@pytest.mark.parametrize("name, kind, words", [
    ("/proc/x", {}, "under /proc"), ("/sys", {}, "under /sys"), ("/dev/shm/fleet", {}, "under /dev"),
    ("/", {}, "root directory"), ("", {}, "empty path"),
    ("{p}/file", {"create": True}, "not a directory"), ("{p}/file/sub", {"create": True}, "not a directory"),
    ("{p}/" + "s/" * 60, {"agent": True}, "too long for the agent's unix sockets"),
    ("{p}/shared", {"agent": True, "create": True}, "writable by every user"),
    ("{p}/" + "x/" * 2000, {}, "longer than"),
])
def test_state_dir_refuses(place: Path, name: str, kind: dict, words: str) -> None:
    (place / "shared").mkdir(mode=0o777)
    (place / "shared").chmod(0o1777)
    assert words in refused(options.StateDir(**kind), name.replace("{p}", str(place)))


def test_state_dir_accepts(place: Path) -> None:
    assert convert(options.StateDir(create=True), f"{place}/new/state") == place / "new" / "state"
    assert convert(options.StateDir(create=True, agent=True), f"{place}/dir") == place / "dir"
    # `fleet down` under a file: nothing to stop, not an error (tests/integration/test_up_down.py)
    assert convert(options.StateDir(), f"{place}/file/sub") == place / "file" / "sub"


# ------------------------------------------------------------------------------------------------ names


def test_the_name_patterns_are_the_schemas() -> None:
    """Which bug: fleet.yaml's ID, label or model rules change and the CLI refuses (or lets through) other names."""
    defs = json.loads(SCHEMA.read_text())["$defs"]
    for key, pattern in (("id", options.ID_PATTERN), ("label", options.LABEL_PATTERN), ("model", options.MODEL_PATTERN)):
        assert defs[key]["pattern"] == pattern + "(?!\\n)", key


@pytest.mark.parametrize("value", ["", " ", "a b", "a\nb", "pool\u202e", "po\u200bol", "Pool", "pool_a", "-pool",
                                   "pool-", "ü", "p" * 64, "\udcff"])
def test_id_refuses(value: str) -> None:
    refused(options.ID, value)


@pytest.mark.parametrize("value", ["pool-local-main", "a", "0", "p" * 63])
def test_id_accepts(value: str) -> None:
    assert convert(options.ID, value) == value


def test_hostname() -> None:
    assert convert(options.HOSTNAME, "worker-1.example.com") == "worker-1.example.com"
    assert "longer than 253" in refused(options.HOSTNAME, "h" * 10_000)
    assert "control or invisible" in refused(options.HOSTNAME, "evil\nhost")
    assert "empty hostname" in refused(options.HOSTNAME, "")


def test_label_list() -> None:
    labels = options.NameList(options.LABEL)
    assert convert(labels, "gpu, region=eu-west,,tier=dev ") == ("gpu", "region=eu-west", "tier=dev")
    assert convert(labels, "") == ()
    for bad in ("=x", "GPU", "a b", "gpu=\u202e", "x" * 300):
        refused(labels, bad)


def test_a_bad_secret_is_refused_without_showing_it() -> None:
    for bad in ("s3cret with space", "s3cret\u202e", "s3cret" * 200):
        assert "s3cret" not in refused(options.SECRET, bad)
    assert convert(options.SECRET, " s3cret\n") == "s3cret"  # `export FLEET_ENROLL_KEY="$(cat key)"` and the like


def test_a_malformed_machine_id_is_refused_as_the_server_would() -> None:
    """Exit 1 with `malformed`-like words, as the server's InvalidRequest (tests/integration/test_hosts_control.py)."""
    assert convert(options.MACHINE_ID, " ABCD-12 ") == "abcd-12"
    for bad in ("", "zz", "not-an-id!", "a" * 37, "ab\u202ecd"):
        with pytest.raises(InvalidRequest):
            convert(options.MACHINE_ID, bad)


def test_one_line_and_shown_escape_what_would_break_a_line() -> None:
    assert one_line("plain text: ok") == "plain text: ok"
    assert one_line("a\nb\u202ec\udcff\t") == "a\\nb\\u202ec\\udcff\\t"
    assert options.shown("a\nb") == "'a\\nb'"
    assert options.shown("x" * 100).endswith("…'") and len(options.shown("x" * 100)) < 70


# ------------------------------------------------------------------------------------------------ usage errors


@pytest.mark.parametrize("args", [
    ["list", "--connect-timeout", "nan"], ["list", "--nats", "nats://127.0.0.1:99999"], ["list", "--no-such"],
    ["show"], ["agent", "logs", "-n", "-5"], ["plan", "--out", "/proc/fleet-x"], ["route", "set", "--preferred-pool",
    "p\u202e\nx"], ["up", "--timeout", "inf"], ["server", "--pid-file", "/dev/null"], ["schema", "-o", "/sys/x"],
    ["list", "--nats", "nats://a\nb:1"], ["validate", "extra\nargument"],
])
def test_usage_errors_are_one_line_and_exit_64(args: list[str], tmp_path: Path) -> None:
    result = run(*args, cwd=tmp_path)
    assert result.exit_code == EXIT_USAGE, result.output
    assert one_error_line(result)
    assert "Traceback" not in result.output


def test_a_group_without_a_command_shows_its_help() -> None:
    result = run("hosts")
    assert result.exit_code == EXIT_USAGE and "Usage: fleet hosts" in result.stderr


# ------------------------------------------------------------------------------------------------ at run time


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30),
       end_newline=st.booleans(), n=st.integers(0, 40), max_bytes=st.integers(1, 2000))
def test_tail_is_the_end_of_the_file(tmp_path_factory, lines, end_newline, n, max_bytes) -> None:
    """Which bug: an off-by-one at a block boundary, a cut first line, or -n 0 printing everything."""
    data = b"\n".join(lines) + (b"\n" if end_newline and lines else b"")
    path = tmp_path_factory.mktemp("tail") / "log"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        got = tail(fh, n, max_bytes=max_bytes)
        assert fh.tell() == len(data)
    expected = data.splitlines(keepends=True)[-n:] if n else []
    if len(data) <= max_bytes:
        assert got == expected
    else:  # bounded: never more than max_bytes read, and what is shown is the true end
        assert b"".join(got) == data[len(data) - len(b"".join(got)):]
        assert len(b"".join(got)) <= max_bytes and len(got) <= n


def test_agent_logs_prints_the_last_lines(tmp_path: Path) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    (state / "agent.log").write_bytes(b"".join(b"line %d\n" % i for i in range(1000)) + b"bad \xff byte\n")
    result = run("agent", "logs", "--state-dir", str(state), "-n", "3")
    assert result.exit_code == 0 and result.stdout == "line 998\nline 999\nbad \ufffd byte\n"
    assert run("agent", "logs", "--state-dir", str(state), "-n", "0").stdout == ""
    assert len(run("agent", "logs", "--state-dir", str(state), "-n", "1000000").stdout.splitlines()) == 1001


def test_agent_run_without_a_key_is_refused_before_connecting(tmp_path: Path, closed_port: int) -> None:
    result = run("agent", "run", "--state-dir", str(tmp_path / "a"), "--nats", f"nats://127.0.0.1:{closed_port}")
    # a usage error, not "cannot reach NATS" (exit 69): it never got as far as connecting, nor made its state dir
    assert result.exit_code == EXIT_USAGE and "no enrollment key" in one_error_line(result)
    assert not (tmp_path / "a").exists()


class RecordedAgent:
    """Stands in for fleet.agents.agent.Agent in `fleet agent run`: records the settings the command built."""

    settings: list = []

    def __init__(self, settings) -> None:
        RecordedAgent.settings.append(settings)

    async def run(self) -> None:
        return None


@pytest.mark.parametrize("args, expected", [
    (("--connect-timeout", "0.2"), 0.2),  # given: obeyed, even though it is below the agent's default
    (("--connect-timeout", "7"), 7.0),
    ((), 5.0),  # not given: an agent waits longer for NATS than a one-shot command
])
def test_agent_run_obeys_an_explicit_connect_timeout(tmp_path: Path, closed_port: int, monkeypatch,
                                                      args: tuple[str, ...], expected: float) -> None:
    """Which bug: the agent's longer default (5 s) overriding what the user asked for. Asserted on the settings the
    command hands the agent, not on how long a failed connect took."""
    from fleet.cli import agent_cmds

    monkeypatch.setattr(agent_cmds, "Agent", RecordedAgent)
    monkeypatch.setattr(RecordedAgent, "settings", [])
    result = run("agent", "run", "--state-dir", str(tmp_path / "a"), "--nats", f"nats://127.0.0.1:{closed_port}",
                 *args, env={"FLEET_ENROLL_KEY": "k" * 20})
    assert result.exit_code == 0, result.output
    assert [s.connect_timeout for s in RecordedAgent.settings] == [expected]


@pytest.mark.parametrize("content, words", [
    (b"\x00\x01{binary", None),  # not JSON: read as a fleet.yaml, whose loader says what is wrong (exit 1)
    (b"{" + b"\xff" * 10, "not UTF-8"),
    (b'{"format_version": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
    (b'{"format_version": "9\\nnine"}', "format version '9\\nnine'"),
    (b'{"format_version": 1, "changes": 7}', "not a valid saved plan"),
])
def test_apply_refuses_a_bad_plan_file_in_one_line(tmp_path: Path, closed_port: int, content: bytes,
                                                   words: str | None) -> None:
    plan = tmp_path / "plan.json"
    plan.write_bytes(content)
    result = run("apply", str(plan), "--nats", f"nats://127.0.0.1:{closed_port}")
    assert result.exit_code == EXIT_ERROR, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    if words is not None:
        assert words in one_error_line(result)


def test_apply_refuses_a_huge_plan_file(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    with open(plan, "wb") as fh:
        fh.truncate(65 * 1024 * 1024)  # sparse: no disk used
    result = run("apply", str(plan))
    assert result.exit_code == EXIT_USAGE and "larger than" in one_error_line(result)


def test_validate_a_fifo_without_writer_does_not_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    result = run("validate", "-f", str(tmp_path / "fifo"))  # a hang here is ended by the test's timeout
    assert result.exit_code == EXIT_ERROR and "file is empty" in result.stderr


def wait_until_waiting_for_a_reader(thread: threading.Thread) -> None:
    """Until `thread` is blocked in open() of a FIFO, waiting for the other end (Linux: its wchan names the kernel's
    wait_for_partner), so that the reader opens a FIFO whose writer is already there."""
    wchan = Path(f"/proc/self/task/{thread.native_id}/wchan")
    wait_for(lambda: wchan.read_text() == "wait_for_partner", 10, 0.01, "the writer blocked in open() of the FIFO")


def test_validate_reads_a_fifo_that_has_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = EXAMPLE.read_bytes()

    def write() -> None:
        with open(fifo, "wb") as fh:
            fh.write(text)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    wait_until_waiting_for_a_reader(writer)  # the reader must now block for the writer's data, not see EOF
    result = run("validate", "-f", str(fifo))
    writer.join(5)
    assert result.exit_code == 0, result.output


def test_enroll_key_file_from_a_fifo_and_not_from_a_device(tmp_path: Path, closed_port: int) -> None:
    fifo = tmp_path / "key"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("secret-from-a-pipe\n"), daemon=True)
    writer.start()
    wait_until_waiting_for_a_reader(writer)
    result = run("agent", "run", "--state-dir", str(tmp_path / "a"), "--enroll-key-file", str(fifo),
                 "--nats", f"nats://127.0.0.1:{closed_port}", "--connect-timeout", "0.2")
    assert result.exit_code == 69, result.output  # the key was read: the agent went on to connect
    result = run("agent", "run", "--state-dir", str(tmp_path / "a"), "--enroll-key-file", "/dev/zero")
    assert result.exit_code == EXIT_USAGE and "not a regular file" in one_error_line(result)


def test_schema_to_a_file_and_to_stdout(tmp_path: Path) -> None:
    result = run("schema", "--base", "-o", str(tmp_path / "s.json"))
    assert result.exit_code == 0 and json.loads((tmp_path / "s.json").read_text())["title"] == "fleet.yaml"
    result = run("schema", "--base", "-o", "-")
    assert result.exit_code == 0 and json.loads(result.stdout)["title"] == "fleet.yaml"


def test_route_set_with_a_unicode_pool_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_bytes(EXAMPLE.read_bytes())
    result = run("route", "set", "my-fintech-app", "--preferred-pool", "pöol-\u202elocal", "-f", str(fleet_file))
    assert result.exit_code == EXIT_USAGE and "\\u202e" in one_error_line(result)
    assert fleet_file.read_bytes() == EXAMPLE.read_bytes()
