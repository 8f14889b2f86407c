"""`hotswapd ctl`: the client of the control socket (status, reload, rollback, signal).

Every failure is one line that says what to do: no hotswapd listening, a socket this user
may not open, a swap that was rolled back (with the reason, exit 1). `reload --wait` and
`rollback --wait` print each phase as hotswapd reports it, so a CI job's log shows where a
bad build stopped. `status` prints a table unless `--json` is given (scripts: always
pass `--json`; the table is for people and may change).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, NoReturn

from hotswapd.boot.control_paths import client_path
from hotswapd.boot.units import format_size
from hotswapd.client.http import Answer, Connection
from hotswapd.errors import EXIT_FAILURE, EXIT_OK, HotswapdError, UsageError

_PHASE_WORDS = {
    "checked": "program checked",
    "spawned": "spawned",
    "notified": "READY=1 received",
    "ready": "ready (health check passed)",
    "settled": "settled",
    "memory_ok": "memory ok",
    "probing": "probing (no live traffic yet)",
    "canary_step": "canary step",
    "canary_step_ok": "canary step ok",
    "canary_ok": "canary ok",
    "cutover": "cutover",
    "handover": "handover (old queue empty)",
    "old_exited": "old generation exited",
    "gate_failed": "gate failed",
    "candidate_stopped": "candidate stopped",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"ctl: {message} (see 'hotswapd ctl --help')")


def parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument(
        "--control-socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="the socket hotswapd listens on (env HOTSWAPD_CONTROL_SOCKET)",
    )
    top = _Parser(
        prog="hotswapd ctl",
        parents=[common],
        description="Talk to a running hotswapd through its control socket.",
    )
    sub = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    status = sub.add_parser("status", parents=[common], help="generations, last swap, watch")
    status.add_argument("--json", action="store_true", help="print the status document")
    for name, text in (
        ("reload", "swap to a new generation of the program"),
        ("rollback", "swap back to the previous committed generation's binary"),
    ):
        cmd = sub.add_parser(name, parents=[common], help=text)
        cmd.add_argument(
            "--wait",
            action="store_true",
            help="show each phase; exit 0 when committed, 1 when rolled back",
        )
    signal = sub.add_parser("signal", parents=[common], help="send a signal to the active one")
    signal.add_argument("signal", metavar="NAME", help="HUP, SIGUSR1, 10, ...")
    return top


class Client:
    """The control socket at `path`: one request per connection, errors as one line."""

    def __init__(self, path: str) -> None:
        self.connection = Connection(path)

    @property
    def path(self) -> str:
        return self.connection.path

    def get_json(self, route: str) -> dict[str, Any]:
        with self.connection.request("GET", route) as answer:
            return self._checked(answer, answer.json())

    def post(self, route: str, body: dict[str, Any]) -> list[dict[str, Any]]:
        """POST and read the answer: one JSON object, or the lines of a --wait stream."""
        with self.connection.request("POST", route, body, timeout=None) as answer:
            if answer.content_type != "application/x-ndjson":
                return [self._checked(answer, answer.json())]
            lines = []
            for line in answer.lines():
                lines.append(line)
                show_line(line)
            return lines

    def _checked(self, answer: Answer, data: dict[str, Any]) -> dict[str, Any]:
        if answer.status == 403:
            raise self.connection.denied()
        if answer.status >= 400:
            raise HotswapdError(f"ctl: {data.get('error', f'HTTP {answer.status}')}")
        return data


def show_line(line: dict[str, Any]) -> None:
    """Print one streamed phase as it arrives (stdout is flushed: CI logs show it live)."""
    if "phase" not in line:
        return
    phase = line["phase"]
    what = _PHASE_WORDS.get(phase, phase)
    if phase == "canary_step" and "step" in line:
        weight = line.get("weight_percent")
        share = f"{weight}% of new connections" if weight is not None else "both serve"
        what = f"canary step {line['step']}/{line.get('steps', '?')}: {share}"
    where = f"generation {line['generation']} pid {line['pid']}" if "pid" in line else ""
    if phase in ("cutover", "old_exited"):
        where += f" (old: generation {line.get('old_generation')} pid {line.get('old_pid')})"
    print(f"  {line.get('phase_s', 0):7.3f}s  {what:<28} {where}".rstrip(), flush=True)


def finish(lines: list[dict[str, Any]], kind: str) -> int:
    """Exit 0 when the swap committed, 1 (and the reason on stderr) otherwise."""
    final = lines[-1] if lines else {}
    if "outcome" not in final:
        print(f"hotswapd: {kind}: {final.get('error', 'no outcome received')}", file=sys.stderr)
        return EXIT_FAILURE
    outcome = final["outcome"]
    if outcome["outcome"] == "committed":
        print(
            f"committed: generation {outcome['new_generation']} (pid {outcome['new_pid']}) is "
            f"serving, in {sum(outcome['phases'].values()):.3f}s"
        )
        return EXIT_OK
    verb = "refused" if outcome["outcome"] == "refused" else "rolled back"
    # Only when it really does: in shared mode a candidate can take the serving one down.
    serving = (
        f"; generation {outcome['serving_generation']} keeps serving"
        if outcome.get("serving_generation")
        else ""
    )
    print(f"hotswapd: {kind} {verb}: {outcome['reason']}{serving}", file=sys.stderr)
    return EXIT_FAILURE


def _age(started_at: float) -> str:
    seconds = int(time.time() - started_at)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def render_table(status: dict[str, Any]) -> str:
    """The human view of the status document."""
    own = status["hotswapd"]
    out = [
        f"hotswapd pid {own['pid']}{' (PID 1)' if own['pid1'] else ''}, {own['state']}, "
        f"up {_age(own['started_at'])}, control {own['control_socket']}",
        "",
        f"  {'GEN':>4}  {'PID':>7}  {'STATE':<11} {'AGE':>7}  {'RSS':>10}  "
        f"{'SHA256':<12}  EXECUTABLE",
    ]
    for gen in status["generations"]:
        mark = "*" if gen["generation"] == status["active"]["generation"] else " "
        out.append(
            f" {mark}{gen['generation']:>4}  {gen['pid']:>7}  {gen['state']:<11} "
            f"{_age(gen['started_at']):>7}  {format_size(gen['rss_bytes']):>10}  "
            f"{(gen['sha256'] or '?')[:12]:<12}  {gen['executable']}"
        )
    swap = status["last_swap"]
    out.append("")
    if swap is None:
        out.append("last swap: none yet")
    else:
        out.append(
            f"last swap: #{swap['swap_id']} {swap['outcome']} ({swap['trigger']}): {swap['reason']}"
        )
        out.append("  " + ", ".join(f"{k} {v:.3f}s" for k, v in swap["phases"].items()))
    watch = status["watch"]
    out.append(f"watch: {watch['mode']}" + (f" ({watch['reason']})" if watch.get("reason") else ""))
    for entry in watch["paths"]:
        entry = entry if isinstance(entry, dict) else {"path": entry}
        details = ", ".join(
            f"{key} {value}" for key, value in entry.items() if key != "path" and value != ""
        )
        out.append(f"  {entry['path']}" + (f" ({details})" if details else ""))
    for lane in status.get("listeners", []):
        line = f"listener {lane['name']} {lane['address']}: {lane['mode']} ({lane['why']})"
        if lane.get("candidate_generation") is not None:
            line += (
                f"; {lane.get('phase')}: generation {lane['candidate_generation']} gets "
                f"{lane.get('candidate_percent', 0)}% of new connections"
            )
        out.append(line)
    probation = status.get("probation")
    if probation:
        out.append(
            f"probation: generation {probation['generation']}, "
            f"{probation['remaining_s']:.1f}s of {probation['seconds']:g}s left"
        )
    for child in status.get("unowned_children", []):
        out.append(f"unowned child: pid {child['pid']} {child['command']} (no live generation)")
    counters = {**status["counters"], "orphans_reaped": status["orphans_reaped"]}
    for name, by_code in status["counters"].items():
        if isinstance(by_code, dict) and by_code:
            out.append(
                f"{name.replace('_', ' ')}: "
                + ", ".join(f"{code} {count}" for code, count in sorted(by_code.items()))
            )
    out.append(
        "counters: "
        + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in counters.items() if not isinstance(v, dict)
        )
    )
    return "\n".join(out)


def run(args: argparse.Namespace, path: str) -> int:
    client = Client(path)
    if args.command == "status":
        status = client.get_json("/status")
        print(json.dumps(status, indent=2) if args.json else render_table(status))
        return EXIT_OK
    if args.command == "signal":
        (answer,) = client.post("/signal", {"signal": args.signal})
        print(f"sent {answer['signal']} to generation {answer['generation']} (pid {answer['pid']})")
        return EXIT_OK
    lines = client.post(f"/{args.command}", {"wait": args.wait})
    if not args.wait:
        print(f"{args.command} requested (add --wait to follow it)")
        return EXIT_OK
    return finish(lines, args.command)


def main(args: list[str]) -> int:
    namespace = parser().parse_args(args)
    path = client_path(getattr(namespace, "control_socket", None), os.environ)
    try:
        return run(namespace, path)
    except BrokenPipeError:
        # `ctl status | head`: the reader has what it wanted; no traceback, and no second
        # error when the interpreter flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
