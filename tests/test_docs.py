"""Every page of the docs, held to the real hotswapd, so the docs cannot rot.

README.md and every page in docs/ are read block by block:

- Shell blocks (`sh`, `bash`, and `console` or untagged transcripts with `$ ` prompts):
  every hotswapd invocation, also inside `docker run`, `docker exec` and `kubectl exec`,
  parses with the real option table (`check_invocation` from tests/test_examples.py),
  with its `HOTSWAPD_*` settings and the example server's own flags. `bash -n` checks the
  syntax. What is safe and local runs for real: the `go build` lines (into a temp dir),
  the read-only `sysctl` and `/proc` lines, `hotswapd doctor`, `--help`, and every form
  of `hotswapd ctl` and `hotswapd deploy` against a live hotswapd serving the example Go
  server; the transcripts shown must match what they print (numbers, paths and hashes
  normalised). Docker and Kubernetes do not run here: those lines are only parsed.
- `toml` blocks go through `--config`. Log lines (in `json` and `text` blocks and in
  prose) must name events hotswapd emits, with keys it really logs; the documented
  `ctl status --json` document may only use keys the real one has; every metric named
  must be in a real `/metrics` scrape, with its type and labels.
- `dockerfile`, `yaml` and `go` blocks must be excerpts of the shipped files.
- Links and anchors resolve; the repository files, modules and functions named exist;
  the option tables' defaults and the design's state tables match the code.

A failure names the page and line, so the fix goes to the doc (or to the code it shows).
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hotswapd.boot import config as hs
from hotswapd.boot.launch import check_templates
from hotswapd.core import states
from hotswapd.errors import UsageError
from hotswapd.gates import elf
from tests.harness import Hotswapd
from tests.helpers import go_binary
from tests.test_control import run_cli_as
from tests.test_examples import (
    check_invocation,
    dockerfile_instructions,
    dockerfile_stages,
    env_assignments,
    exec_form,
    hotswapd_env,
    hotswapd_lists,
    logged_events,
    package_trees,
    parse_yaml,
    run_config,
)

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md"] + [
    REPO / "docs" / f"{name}.md"
    for name in ("quickstart", "go-integration", "servers", "swap", "watching", "containers",
                 "operations", "troubleshooting", "design", "canary")
]  # fmt: skip
PAGE_IDS = [page.relative_to(REPO).as_posix() for page in PAGES]
LOGGED = logged_events(package_trees())  # event names the package's syntax tree logs
SOURCE = "\n".join(path.read_text() for path in sorted((REPO / "hotswapd").rglob("*.py")))
GO_MAIN = REPO / "docker" / "server" / "main.go"
GO_FLAGS = set(re.findall(r'flag\.\w+\(\s*"([\w-]+)"', GO_MAIN.read_text()))
EXAMPLE_SERVER = ("/app/server", "/app/bin/server")  # where the docs put the example server
SHELL_LANGS = ("sh", "bash", "shell")
OPERATORS = ("&&", "||", "|", ";")
# Flags of other tools that the prose names in backticks next to hotswapd's own.
OTHER_FLAGS = {
    "--network": "docker run",
    "-t": "docker run",
    "-v": "docker run",
    "-o": "go build",
    "--no-control-socket": "gunicorn",
}
DOCKER_RUN_VALUE = {"--name", "-p", "--publish", "-e", "--env", "-v", "--volume", "--entrypoint",
                    "--stop-timeout", "--user", "-u", "--tmpfs", "--sysctl", "--ulimit",
                    "--restart", "--network", "-w", "--mount"}  # fmt: skip
DOCKER_EXEC_VALUE = {"-e", "--env", "-u", "--user", "-w", "--workdir"}
DOCKER_RUN_SWITCH = {"-d", "--detach", "--rm", "-t", "-i", "-it", "--init", "--read-only"}
CONTROL_ROUTES = set(re.findall(r'add_(?:get|post)\("(/\w+)"', SOURCE))
SERVER_ROUTES = set(re.findall(r'case "(/[\w/]*)"', GO_MAIN.read_text()))


def rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# --------------------------------------------------------------------------- reading the docs


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it opens, its language tag and its text (dedented)."""

    page: Path
    line: int
    lang: str
    text: str

    def where(self, offset: int = 0) -> str:
        return f"{rel(self.page)}:{self.line + offset}"


_FENCE_OPEN = re.compile(r"^(\s*)```([\w-]*)\s*$")


@functools.cache
def read_page(page: Path) -> tuple[tuple[Block, ...], str]:
    """A page's fenced blocks, and its prose with every fenced line blanked (line numbers kept)."""
    lines = page.read_text().splitlines()
    blocks: list[Block] = []
    prose = list(lines)
    index = 0
    while index < len(lines):
        match = _FENCE_OPEN.match(lines[index])
        if not match:
            index += 1
            continue
        indent, lang = match.groups()
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{rel(page)}:{index + 1}: the code fence is never closed"
        body = [line.removeprefix(indent) for line in lines[index + 1 : end]]
        blocks.append(Block(page, index + 1, lang, "\n".join(body) + "\n"))
        prose[index : end + 1] = [""] * (end + 1 - index)
        index = end + 1
    return tuple(blocks), "\n".join(prose)


def all_blocks(lang: str | None = None) -> list[Block]:
    return [b for page in PAGES for b in read_page(page)[0] if lang is None or b.lang == lang]


def inline_code(page: Path) -> list[tuple[int, str]]:
    """Every `code span` in a page's prose, with its line (spans may wrap; `\\|` unescaped)."""
    prose = read_page(page)[1]
    return [(prose.count("\n", 0, m.start()) + 1, " ".join(m.group(1).replace("\\|", "|").split()))
            for m in re.finditer(r"`([^`]+)`", prose)]  # fmt: skip


def tables(page: Path) -> list[tuple[list[str], list[tuple[int, list[str]]]]]:
    """The prose tables of a page: header cells, and (line, cells) for each row."""
    found: list[tuple[list[str], list[tuple[int, list[str]]]]] = []
    lines = read_page(page)[1].splitlines()
    index = 0
    while index < len(lines) - 1:
        if lines[index].startswith("|") and re.match(r"^\|[-| :]+\|$", lines[index + 1]):
            header = _cells(lines[index])
            rows: list[tuple[int, list[str]]] = []
            index += 2
            while index < len(lines) and lines[index].startswith("|"):
                rows.append((index + 1, _cells(lines[index])))
                index += 1
            found.append((header, rows))
        index += 1
    return found


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --------------------------------------------------------------------------- shell commands


@dataclass(frozen=True)
class Command:
    """One shell command of a block, its words and (in a transcript) the output shown."""

    block: Block
    offset: int  # lines after the opening fence
    text: str
    words: tuple[str, ...]
    output: tuple[str, ...] = ()
    exit_code: int | None = None  # from a following `$ echo $?`

    def where(self) -> str:
        return self.block.where(self.offset)


def commands(block: Block) -> list[Command]:
    """The commands of a shell block or of a transcript (`$ ` lines; the rest is output)."""
    lines = block.text.splitlines()
    transcript = block.lang == "console" or any(line.startswith("$ ") for line in lines)
    if block.lang not in (*SHELL_LANGS, "console", "") or (block.lang == "" and not transcript):
        return []
    found: list[Command] = []
    index = 0
    while index < len(lines):
        start = index
        if transcript and not lines[index].startswith("$ "):
            index += 1
            continue
        text = lines[index].removeprefix("$ ")
        while text.endswith("\\") and index + 1 < len(lines):
            index += 1
            text = text[:-1] + " " + lines[index].strip()
        index += 1
        output: list[str] = []
        while transcript and index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        words = tuple(shlex.split(text, comments=True))
        if words == ("echo", "$?") and found:
            found[-1] = Command(found[-1].block, found[-1].offset, found[-1].text,
                                found[-1].words, found[-1].output, int(output[0]))  # fmt: skip
        elif words:
            found.append(Command(block, start + 1, text, words, tuple(output)))
    return found


def all_commands(page: Path | None = None) -> list[Command]:
    pages = PAGES if page is None else [page]
    return [c for p in pages for block in read_page(p)[0] for c in commands(block)]


def simple_commands(words: tuple[str, ...]) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Split a line at `&&`, `|`, `;`…, and strip leading `VAR=value`, `sudo` and `exec`."""
    current: list[str] = []
    for word in [*words, ";"]:
        if word in OPERATORS or word.endswith(";"):
            if word.endswith(";") and word != ";":
                current.append(word[:-1])
            env: dict[str, str] = {}
            while current and re.match(r"^[A-Z_][A-Z0-9_]*=", current[0]):
                key, _, value = current.pop(0).partition("=")
                env[key] = value
            while current and current[0] in ("sudo", "exec"):
                current.pop(0)
            if current:
                yield env, current
            current = []
        else:
            current.append(word)


@dataclass
class Invocation:
    """The words after `hotswapd`, the HOTSWAPD_* environment it gets, and where it was found."""

    argv: list[str]
    env: dict[str, str]
    where: str


@functools.cache
def image() -> tuple[list[str], dict[str, str], set[str]]:
    """The example image's ENTRYPOINT, its HOTSWAPD_* environment and its build ARGs
    (those before the first FROM too: `--build-arg BUILDER_IMAGE=…` picks a base image)."""
    text = (REPO / "docker" / "Dockerfile").read_text()
    stages = dockerfile_stages(text)
    runtime = stages[-1]
    instructions = dockerfile_instructions(text)
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    lines = [a for k, a in instructions[:first_from] if k == "ARG"]
    lines += [a for stage in stages for a in stage.all("ARG")]
    args = {word.split("=")[0] for line in lines for word in shlex.split(line)}
    return exec_form(runtime.one("ENTRYPOINT")), hotswapd_env(env_assignments(runtime)), args


def located_env(env: dict[str, str], where: str) -> dict[str, str]:
    """`hotswapd_env` (every HOTSWAPD_* name must be an option's), failing with the location."""
    try:
        return hotswapd_env(env)
    except AssertionError as exc:
        raise AssertionError(f"{where}: {exc}") from None


def docker_run(args: list[str], where: str) -> tuple[list[str], dict[str, str], str]:
    """`docker run OPTIONS IMAGE ARGS`: the hotswapd argv, its environment, and the image."""
    env: dict[str, str] = {}
    entrypoint = None
    index = 0
    while index < len(args) and args[index].startswith("-"):
        flag = args[index]
        if flag in DOCKER_RUN_VALUE:
            value = args[index + 1]
            if flag in ("-e", "--env"):
                key, _, val = value.partition("=")
                env[key] = val
            elif flag == "--entrypoint":
                entrypoint = value
            index += 2
        else:
            assert flag in DOCKER_RUN_SWITCH or "=" in flag, f"{where}: teach the test {flag}"
            index += 1
    image_name, rest = args[index], args[index + 1 :]
    entry, image_env, _ = image()
    if entrypoint is None:
        argv = entry[1:] + rest
    else:
        assert entrypoint == "hotswapd", f"{where}: --entrypoint {entrypoint}"
        argv = rest
    return argv, {**image_env, **located_env(env, where)}, image_name


def invocations(command: Command) -> Iterator[Invocation]:
    """Each hotswapd invocation on one shell line (plain, or through docker or kubectl)."""
    where = command.where()
    for env, words in simple_commands(command.words):
        head = words[0]
        if head == "hotswapd":
            yield Invocation(words[1:], located_env(env, where), where)
        elif words[:2] == ["docker", "run"]:
            argv, run_env, _ = docker_run(words[2:], where)
            yield Invocation(argv, run_env, where)
        elif words[:2] == ["docker", "exec"]:
            index = 2
            while words[index].startswith("-"):
                index += 2 if words[index] in DOCKER_EXEC_VALUE else 1
            if words[index + 1 : index + 2] == ["hotswapd"]:
                yield Invocation(words[index + 2 :], image()[1], where)
        elif words[:2] == ["kubectl", "exec"] and "--" in words:
            inner = words[words.index("--") + 1 :]
            if inner[:1] == ["hotswapd"]:
                yield Invocation(inner[1:], image()[1], where)
        else:
            assert "hotswapd" not in words, f"{where}: a hotswapd call the test cannot see: {words}"


def check_run(invocation: Invocation) -> None:
    """Parse one invocation; in run and doctor mode also its templates and server flags."""
    argv = invocation.argv
    try:
        check_invocation(argv, invocation.env)
    except AssertionError as exc:
        raise AssertionError(f"{invocation.where}: {exc}") from None
    mode_args = argv[1:] if argv[:1] == ["doctor"] else argv
    if argv[:1] in (["ctl"], ["deploy"]) or "--" not in mode_args:
        return
    config = run_config(mode_args, invocation.env)
    try:
        check_templates(config.command, [spec.name for spec in config.listen])
    except UsageError as exc:
        raise AssertionError(f"{invocation.where}: {exc}") from None
    if config.command[0] in EXAMPLE_SERVER:
        for word in config.command[1:]:
            if word.startswith("-"):
                name = word.lstrip("-").split("=")[0]
                assert name in GO_FLAGS, f"{invocation.where}: the example server has no {word}"


_PLACEHOLDERS = {"PATH": "/run/hotswapd/control.sock", "NAME": "HUP", "SRC": "/tmp/new",
                 "NEW": "/tmp/new", "DEST": "/app/server", "PROGRAM": "/app/server"}  # fmt: skip


def synopsis(text: str) -> list[str]:
    """A usage line as a concrete command: brackets opened, placeholders given a sample value."""
    words = text.replace("[", " ").replace("]", " ").split()
    out = [_PLACEHOLDERS.get(w, w) for w in words if w not in ("OPTIONS", "ARGS...", "...")]
    return out[1:]


# --------------------------------------------------------------------------- comparing output


def shape(line: str) -> str:
    """A line with what varies between runs (URLs, paths, hashes, numbers) replaced by tokens."""
    line = re.sub(r"https?://[^\s;,)]+", "URL", line)
    line = re.sub(r"(?<![\w.:/])/[\w.@+/-]*", "PATH", line)
    line = re.sub(r"\b[0-9a-f]{12,64}\b", "HEX", line)
    line = re.sub(r"\d+(\.\d+)?", "N", line)
    return " ".join(line.split())


def shapes(lines: Iterator[str] | list[str] | tuple[str, ...]) -> list[str]:
    return [shape(line) for line in lines if line.strip()]


def json_logs(text: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """The JSON log lines in a block, with `...` elisions (`{...}`, `, ...}`) removed."""
    for number, line in enumerate(text.splitlines()):
        if line.startswith("{") and '"event"' in line:
            cleaned = line.replace("{...}", "{}").replace(", ...}", "}")
            try:
                yield number, json.loads(cleaned)
            except json.JSONDecodeError as exc:
                raise AssertionError(f"line {number}: not JSON ({exc}): {line}") from None


def key_drift(doc: Any, real: Any, path: str = "$") -> list[str]:
    """Where the documented JSON has a key, or a type, that the real document does not."""
    if doc is None or real is None:
        return []
    if isinstance(doc, dict):
        if not isinstance(real, dict):
            return [f"{path}: documented as an object, really {type(real).__name__}"]
        problems = [f"{path}.{key}: no such key" for key in doc if key not in real]
        for key in doc.keys() & real.keys():
            problems += key_drift(doc[key], real[key], f"{path}.{key}")
        return problems
    if isinstance(doc, list):
        if not isinstance(real, list):
            return [f"{path}: documented as a list, really {type(real).__name__}"]
        merged: dict[str, Any] = {}
        for item in real:
            if isinstance(item, dict):
                merged.update({k: v for k, v in item.items() if v is not None or k not in merged})
        problems = []
        for number, item in enumerate(doc):
            sample = merged if isinstance(item, dict) else (real[0] if real else None)
            problems += key_drift(item, sample, f"{path}[{number}]")
        return problems
    kinds = (bool, int | float, str)
    doc_kind = next(kind for kind in kinds if isinstance(doc, kind))
    if not isinstance(real, doc_kind) or (doc_kind is not bool and isinstance(real, bool)):
        return [f"{path}: documented as {doc!r}, really {real!r}"]
    return []


# --------------------------------------------------------------------------- source checks


def emitted(event: str) -> bool:
    """Whether hotswapd logs this event: a string literal, a swap phase, or an f-string."""
    if event in LOGGED or f'"{event}"' in SOURCE or f"'{event}'" in SOURCE:
        return True
    phase = re.escape(event.removeprefix("swap_"))
    if event.startswith("swap_") and re.search(rf'_phase\(\s*"{phase}"', SOURCE):
        return True
    placeholder = r"\b(?:PATH|DIR)\b|…"  # a path, a directory, or the rest of the message
    if not re.search(placeholder, event):
        return False
    fragments = [part for part in re.split(placeholder, event) if part.strip(" :")]
    return bool(fragments) and all(part in SOURCE for part in fragments)


# --------------------------------------------------------------------------- 1. commands parse


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_shell_commands_parse_with_the_real_options(page: Path) -> None:
    """Every hotswapd invocation in the page's shell blocks parses, env, templates and all."""
    for command in all_commands(page):
        for invocation in invocations(command):
            check_run(invocation)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_other_blocks_show_valid_hotswapd_lines(page: Path) -> None:
    """hotswapd lines in Dockerfile, YAML and usage blocks, and concrete prose ones, parse."""
    found: list[Invocation] = []
    for block in read_page(page)[0]:
        if block.lang == "dockerfile":
            for keyword, args in dockerfile_instructions(block.text):
                if keyword in ("ENTRYPOINT", "CMD") and args.startswith("["):
                    argv = exec_form(args)
                    if argv[:1] == ["hotswapd"]:
                        found.append(Invocation(argv[1:], image()[1], block.where()))
        elif block.lang == "yaml":
            for document in parse_yaml(block.text):
                for argv in hotswapd_lists(document):
                    found.append(Invocation(argv[1:], {}, block.where()))
        elif block.lang == "" and all(t.startswith("hotswapd ") for t in block.text.splitlines()):
            for offset, text in enumerate(block.text.splitlines(), 1):  # a usage block
                found.append(Invocation(synopsis(text), {}, block.where(offset)))
    for line, span in inline_code(page):
        words = span.split()
        if words[0] == "hotswapd" and len(words) >= 3 and not {"...", "…"} & set(words):
            found.append(Invocation(synopsis(span), {}, f"{rel(page)}:{line}"))
    for invocation in found:
        check_run(invocation)


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_flags_named_in_prose_exist(page: Path) -> None:
    """Each `--flag` (and `-flag` of the example server) in the prose is real; values parse."""
    ctl_flags = {"--wait", "--json", "--no-reload", "--control-socket", "--force", "--timeout"}
    run_flags = {option.flag: option for option in hs.OPTIONS}
    for line, span in inline_code(page):
        words = span.split()
        flag = words[0].split("=")[0]
        if not re.match(r"^--?[a-z]", flag):
            continue
        where = f"{rel(page)}:{line}: `{span}`"
        if flag in OTHER_FLAGS:
            continue
        if not flag.startswith("--"):
            assert flag[1:] in GO_FLAGS, f"{where}: the example server has no {flag}"
            continue
        assert flag in run_flags or flag in ctl_flags | {"--config", "--help", "--version"}, (
            f"{where}: hotswapd has no {flag}"
        )
        value = span[len(flag) :].strip(" =")
        concrete = value and not re.search(r"[A-Z]{3,}|…|\.\.\.|\||\[|<", value)
        if flag in run_flags and concrete and not run_flags[flag].flag_only:
            run_config([flag, value, "--", "/app/server"])


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_docker_compose_and_kubectl_lines_refer_to_real_things(page: Path) -> None:
    """Files, build args, images, compose services and profiles, and deployments exist."""
    compose = parse_yaml((REPO / "docker" / "compose.yaml").read_text())[0]
    kube = parse_yaml((REPO / "docker" / "kubernetes.yaml").read_text())
    deployments = {d["metadata"]["name"] for d in kube if d["kind"] == "Deployment"}
    profiles = {p for service in compose["services"].values() for p in service.get("profiles", [])}
    built_tags = {c.words[c.words.index("-t") + 1] for c in all_commands()
                  if c.words[:2] == ("docker", "build")}  # fmt: skip
    for command in all_commands(page):
        for _, words in simple_commands(command.words):
            where = f"{command.where()}: {' '.join(words)}"
            if words[0] not in ("docker", "kubectl"):
                continue
            for flag, value in itertools.pairwise(words):
                if flag == "-f":
                    assert (REPO / value).is_file(), f"{where}: no file {value}"
                if flag == "--build-arg":
                    assert value.split("=")[0] in image()[2], f"{where}: the Dockerfile has no ARG"
                if flag == "--profile":
                    assert value in profiles, f"{where}: compose.yaml has no profile {value}"
            if words[:2] == ["docker", "run"]:
                image_name = docker_run(words[2:], where)[2]
                assert image_name in built_tags, f"{where}: no `docker build -t {image_name}`"
            if words[:3] == ["docker", "compose", "-f"] and words[-2:-1] == ["watch"]:
                assert words[-1] in compose["services"], f"{where}: no compose service"
            for word in words:
                if word.startswith("deploy/"):
                    assert word.removeprefix("deploy/") in deployments, f"{where}: no Deployment"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_curl_asks_routes_that_exist(page: Path) -> None:
    """Each URL curl asks is a route of the example server, the control socket or /metrics."""
    for command in all_commands(page):
        for _, words in simple_commands(command.words):
            if words[0] != "curl":
                continue
            url = next(w for w in words[1:] if not w.startswith("-") and "/" in w
                       and not w.startswith("/"))  # fmt: skip
            host, _, path = url.removeprefix("http://").partition("/")
            route = "/" + path
            known = CONTROL_ROUTES if host == "hotswapd" else SERVER_ROUTES | {"/metrics"}
            assert route in known, f"{command.where()}: {url}: no such route"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_shell_blocks_are_valid_bash(page: Path) -> None:
    """Each sh/bash block passes `bash -n`, and each script it runs exists and passes it too."""
    for block in read_page(page)[0]:
        if block.lang not in SHELL_LANGS:
            continue
        result = subprocess.run(["bash", "-n"], input=block.text, capture_output=True, text=True,
                                check=False)  # fmt: skip
        assert result.returncode == 0, f"{block.where()}: {result.stderr}"
        for command in commands(block):
            for _, words in simple_commands(command.words):
                if words[0] == "bash" and len(words) > 1:
                    script = REPO / words[1]
                    assert script.is_file(), f"{command.where()}: no {words[1]}"
                    check = subprocess.run(["bash", "-n", str(script)], capture_output=True,
                                           text=True, check=False)  # fmt: skip
                    assert check.returncode == 0, f"{words[1]}: {check.stderr}"


def test_toml_examples_build_a_config(tmp_path: Path) -> None:
    """Each TOML block is a valid --config file: real option names, values that parse."""
    blocks = all_blocks("toml")
    assert blocks, "the docs show no TOML"
    for number, block in enumerate(blocks):
        data = tomllib.loads(block.text)
        unknown = set(data) - set(hs.OPTION_BY_NAME) - {"command"}
        assert not unknown, f"{block.where()}: no such option {sorted(unknown)}"
        path = tmp_path / f"example-{number}.toml"
        path.write_text(block.text)
        flags, command = hs.parse_flags(["--config", str(path), "--", "/app/server"])
        try:
            config = hs.build_config(flags, command, {}, require_command=True)
        except UsageError as exc:
            raise AssertionError(f"{block.where()}: {exc}") from None
        for key, raw in data.items():
            option = hs.OPTION_BY_NAME[key]
            values = raw if isinstance(raw, list) else [raw]
            parsed = tuple(option.parse(v) for v in values)
            expected = parsed if option.repeat else parsed[0]
            assert getattr(config, key) == expected, f"{block.where()}: {key} was not applied"


# --------------------------------------------------------------------------- excerpts


def test_dockerfile_blocks_are_excerpts_of_the_dockerfile() -> None:
    """Every Dockerfile instruction shown in the docs is in docker/Dockerfile as shown."""
    shipped = {(k, " ".join(a.split())) for k, a in
               dockerfile_instructions((REPO / "docker" / "Dockerfile").read_text())}  # fmt: skip
    for block in all_blocks("dockerfile"):
        for keyword, args in dockerfile_instructions(block.text):
            shown = (keyword, " ".join(args.split()))
            assert shown in shipped, f"{block.where()}: {keyword} {args}"


def test_yaml_blocks_match_the_shipped_files() -> None:
    """containers.md shows compose's and the pod's command lines verbatim; no `subPath` anywhere."""
    shipped = [argv for name in ("compose.yaml", "kubernetes.yaml")
               for doc in parse_yaml((REPO / "docker" / name).read_text())
               for argv in hotswapd_lists(doc)]  # fmt: skip
    for block in all_blocks("yaml"):
        documents = parse_yaml(block.text)
        assert "subPath" not in block.text, f"{block.where()}: subPath never sees an update"
        for document in documents:
            for argv in hotswapd_lists(document):
                if block.page.name == "containers.md":
                    assert argv in shipped, f"{block.where()}: not the shipped command line"
            mounts = {m["mountPath"] for m in document.get("volumeMounts", [])}
            for argv in hotswapd_lists(document):
                watches = run_config(argv[1:]).watch
                for watch in watches if mounts else ():
                    assert os.path.dirname(watch.path) in mounts, f"{block.where()}: not mounted"


GO_SOURCES = [GO_MAIN, *sorted((REPO / "go").glob("*.go")),
              *sorted((REPO / "tests" / "servers").rglob("*.go"))]  # fmt: skip


def _in_order(lines: list[str], source: list[str]) -> bool:
    position = 0
    for line in lines:
        try:
            position = source.index(line, position) + 1
        except ValueError:
            return False
    return True


def test_go_blocks_quote_the_example_server(tmp_path: Path) -> None:
    """Go blocks are lines of one of the project's Go files in order (the example server, the
    package, the test servers); the go-systemd one is valid Go."""
    sources = {path: [_go_line(line) for line in path.read_text().splitlines()]
               for path in GO_SOURCES}  # fmt: skip
    gofmt = Path(subprocess.run([go_binary(), "env", "GOROOT"], capture_output=True, text=True,
                                check=True).stdout.strip()) / "bin" / "gofmt"  # fmt: skip
    blocks = all_blocks("go")
    assert blocks
    for block in blocks:
        lines = [_go_line(line) for line in block.text.splitlines()]
        lines = [line for line in lines if line and not re.match(r"^// (\.\.\.|…)", line)]
        if "go-systemd" in block.text:
            imports = [line for line in lines if line.startswith("import ")]
            body = [line for line in lines if not line.startswith("import ")]
            program = "package p\n\n" + "\n".join(imports) + "\n\nfunc f() {\n"
            program += "\n".join(body) + "\n}\n"
            path = tmp_path / "snippet.go"
            path.write_text(program)
            result = subprocess.run([str(gofmt), "-e", str(path)], capture_output=True, text=True,
                                    check=False)  # fmt: skip
            assert result.returncode == 0, f"{block.where()}: not Go: {result.stderr}"
            continue
        if not any(_in_order(lines, source) for source in sources.values()):
            raise AssertionError(f"{block.where()}: not an excerpt (in order) of any Go file")


def _go_line(line: str) -> str:
    code = re.sub(r"\s+//(?! \.\.\.).*$", "", line)
    return " ".join(code.split())


# --------------------------------------------------------------------------- links and names


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    for line in read_page(page)[1].splitlines():
        if match := re.match(r"^#{1,6} (.+)$", line):
            base = slug(match.group(1))
            name, number = base, 0
            while name in found:
                number += 1
                name = f"{base}-{number}"
            found.add(name)
    return found


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    """Every relative link points at a file that exists, and every #anchor at a heading."""
    prose = read_page(page)[1]
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", prose)
    for target in links:
        if re.match(r"^[a-z]+:", target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (page.parent / path_part).resolve() if path_part else page
        assert path.exists(), f"{rel(page)}: link to {target}: no such file"
        if anchor:
            assert path.suffix == ".md", f"{rel(page)}: anchor into {path.name}"
            assert anchor in anchors(path), f"{rel(page)}: link to {target}: no such heading"


def test_readme_links_every_docs_page() -> None:
    """README's Documentation list links each page in docs/, and docs/ has no page left out."""
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", (REPO / "README.md").read_text()))
    pages = {rel(path) for path in (REPO / "docs").glob("*.md")}
    assert linked == pages
    assert pages == set(PAGE_IDS[1:]), "a new page: add it to PAGES in this test"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_repository_files_and_code_named_exist(page: Path) -> None:
    """Files, modules (`swap.py`), attributes (`states.TRANSITIONS`) and `_functions` exist."""
    source_ext = (".py", ".go", ".yaml", ".toml", ".sh", ".md", ".mod")
    top = ("docker/", "tests/", "bench/", "scripts/", "hotswapd/", "docs/")
    for line, span in inline_code(page):
        where = f"{rel(page)}:{line}: `{span}`"
        for word in span.split():
            if word.startswith(top) and (word.endswith(source_ext) or word.endswith("/")):
                assert (REPO / word).exists(), f"{where}: no {word} in the repository"
            elif re.fullmatch(r"(?:[a-z_]+/)?[a-z_]+\.py", word):
                assert (REPO / "hotswapd" / word).is_file(), f"{where}: no hotswapd/{word}"
        if match := re.fullmatch(r"([a-z_]+)\.([A-Z_][A-Za-z_]*)", span):
            module, attribute = match.groups()
            path = REPO / "hotswapd" / f"{module}.py"
            if path.is_file():
                assert re.search(rf"^{attribute}\b", path.read_text(), re.M), f"{where}: missing"
        if re.fullmatch(r"_[a-z_]+", span):
            assert re.search(rf"def {span}\(", SOURCE), f"{where}: no such function in hotswapd/"


def doc_events(page: Path) -> list[tuple[str, str]]:
    """(where, event) for every log event a page names: in log lines, prose and event tables."""
    found: list[tuple[str, str]] = []
    text = page.read_text()
    for match in re.finditer(r'"event": ?"([^"]+)"', text):
        found.append((f"{rel(page)}:{text.count(chr(10), 0, match.start()) + 1}", match.group(1)))
    for line, span in inline_code(page):
        if re.fullmatch(r"(swap|signal|control|metrics|child|restart|watch)_[a-z_]+", span):
            found.append((f"{rel(page)}:{line}", span))
    for header, rows in tables(page):
        if header[:2] == ["event", "level"]:
            found += [(f"{rel(page)}:{n}", name) for n, cells in rows for name in spans(cells[0])]
    for block in read_page(page)[0]:
        if "↑ commit point" in block.text:  # the swap's phase diagram: swap_<phase> events
            for phase in re.findall(r"\[?([a-z_]+)\]?", block.text.splitlines()[0]):
                found.append((block.where(), f"swap_{phase}"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_log_events_named_are_emitted(page: Path) -> None:
    """Every log event a page names is logged somewhere in hotswapd/**/*.py."""
    missing = [f"{where}: {event}" for where, event in doc_events(page) if not emitted(event)]
    assert not missing, "events hotswapd never logs:\n" + "\n".join(missing)


def test_option_table_defaults_are_the_real_defaults() -> None:
    """The `default` column of each option table is what hotswapd uses when nothing is set."""
    defaults = hs.build_config({}, ["/app/server"], {})
    checked = 0
    for page in PAGES:
        for header, rows in tables(page):
            if header[:2] != ["option", "default"]:
                continue
            for line, cells in rows:
                flag = spans(cells[0])[0].split()[0].split("[")[0]
                option = hs.OPTION_BY_FLAG[flag]
                value = getattr(defaults, option.name)
                shown = spans(cells[1])[0] if spans(cells[1]) else cells[1]
                where = f"{rel(page)}:{line}: {flag} default {shown}"
                if shown in ("—", "none") and value in (None, ()):
                    continue
                assert option.parse(shown) == value, f"{where}, really {value!r}"
                checked += 1
    assert checked >= 10


def test_design_state_tables_are_the_state_machine() -> None:
    """design.md's supervisor table is states.TRANSITIONS; its generation table is GenState."""
    page = REPO / "docs" / "design.md"
    by_header = {tuple(header): rows for header, rows in tables(page)}
    transitions = {}
    for _, cells in by_header[("state", "entered when", "leaves to")]:
        (state,) = spans(cells[0])
        targets = {s for s in spans(cells[2]) if re.fullmatch(r"[a-z_]+", s)}
        transitions[states.State(state)] = {states.State(t) for t in targets}
    assert transitions == {key: set(value) for key, value in states.TRANSITIONS.items()}
    documented = {spans(cells[0])[0] for _, cells in by_header[("state", "meaning")]}
    assert documented == {state.value for state in states.GenState}


# --------------------------------------------------------------------------- 2. run for real


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run `hotswapd ARGS` as its own process, as an operator would."""
    full = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "hotswapd", *args], capture_output=True,
                          text=True, env=full, timeout=timeout, check=False)  # fmt: skip


def test_help_and_version_run() -> None:
    """`hotswapd --help` lists every option and every flag of the docs' option tables."""
    help_text = cli("--help")
    assert help_text.returncode == 0, help_text.stderr
    for option in hs.OPTIONS:
        assert option.flag in help_text.stdout
    for page in PAGES:
        for header, rows in tables(page):
            if header[:1] == ["option"]:
                for line, cells in rows:
                    flag = spans(cells[0])[0].split()[0].split("[")[0]
                    assert flag in help_text.stdout, f"{rel(page)}:{line}: {flag} not in --help"
    version = cli("--version")
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert version.stdout.strip() == f"hotswapd {pyproject}"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every `go build` line of the docs, run for real with `-o` moved into a temp dir."""
    out_dir = tmp_path_factory.mktemp("go")
    outputs: dict[str, Path] = {}
    for command in all_commands():
        for env, words in simple_commands(command.words):
            if words[:2] != ["go", "build"]:
                continue
            args = words[2:]
            workdir = REPO / args[args.index("-C") + 1] if "-C" in args else REPO
            declared = (workdir / args[args.index("-o") + 1]).resolve()
            target = out_dir / declared.relative_to(REPO)
            args[args.index("-o") + 1] = str(target)
            build_env = dict(os.environ, **env, GOTOOLCHAIN="local", GOFLAGS="-mod=mod",
                             GOCACHE=str(REPO / "build" / "gocache"),
                             GOPATH=str(REPO / "build" / "gopath"))  # fmt: skip
            result = subprocess.run([go_binary(), "build", *args], cwd=REPO, env=build_env,
                                    capture_output=True, text=True, check=False)  # fmt: skip
            assert result.returncode == 0, f"{command.where()}: {result.stderr}"
            outputs[declared.relative_to(REPO).as_posix()] = target
    return outputs


def test_go_build_lines_build_static_servers(built: dict[str, Path]) -> None:
    """The documented builds succeed, are static, and `docker cp` copies what a build wrote."""
    assert len(built) >= 3
    for binary in built.values():
        assert elf.check_program(str(binary)) is None
        assert b"/lib64/ld-linux" not in binary.read_bytes()[:4096], f"{binary} is dynamic"
    for command in all_commands():
        for _, words in simple_commands(command.words):
            if words[:2] == ["docker", "cp"] and ":" not in words[2]:
                assert words[2] in built, f"{command.where()}: no go build writes {words[2]}"


def test_read_only_sysctl_and_proc_lines_run() -> None:
    """The troubleshooting page's read-only lines run here; its writes name real sysctls."""
    ran = 0
    for command in all_commands(REPO / "docs" / "troubleshooting.md"):
        words = command.words
        writes = [w for w in words if re.match(r"^'?fs\.[\w.]+=\d+'?$", w)]
        for write in writes:
            key = write.strip("'").split("=")[0]
            assert Path("/proc/sys", *key.split(".")).exists(), f"{command.where()}: no {key}"
        if words[0] in ("sysctl", "cat", "for", "find") and "-w" not in words and not writes:
            result = subprocess.run(["bash", "-c", command.text], capture_output=True, text=True,
                                    timeout=20, check=False)  # fmt: skip
            assert result.returncode == 0, f"{command.where()}: {result.stderr}"
            if words[0] == "sysctl":
                assert len(result.stdout.splitlines()) == len(words) - 1
            ran += 1
    assert ran >= 3


HOST_DEPENDENT_CHECKS = ("inotify", "listen", "memory")  # findings that depend on this machine
_FINDING = re.compile(r"^(ok|warn|fail)\s+(.+?): (.+)$")


def doctor_findings(lines: list[str] | tuple[str, ...]) -> tuple[list[tuple[str, str, str]], int]:
    """(level, check, line) per finding, checked against the summary; and the number of fails."""
    *body, summary = [line for line in lines if line.strip()]
    found = []
    for line in body:
        match = _FINDING.match(line)
        assert match, f"not a doctor finding: {line}"
        found.append((match.group(1), match.group(2), line))
    counts = re.fullmatch(r"doctor: (\d+) ok, (\d+) warn, (\d+) fail", summary)
    assert counts, f"not the summary line: {summary}"
    levels = [level for level, _, _ in found]
    assert [int(n) for n in counts.groups()] == [levels.count(lv) for lv in ("ok", "warn", "fail")]
    return found, levels.count("fail")


def test_doctor_transcript_is_what_doctor_prints(tmp_path: Path, built: dict[str, Path]) -> None:
    """The documented doctor line, run as PID 1 over a tmpfs hiding a file, prints what is shown."""
    (command,) = [c for c in all_commands() if c.words[:2] == ("hotswapd", "doctor")]
    app = tmp_path / "app"
    app.mkdir()
    (app / "config.yaml").write_text("greeting: hello\n")  # what the image put there
    argv = [str(tmp_path) + w if w.startswith("/app") else w for w in command.words[1:]]
    script = f"""set -e
        mount -t tmpfs tmpfs {app}
        cp {built["build/bin/server"]} {app}/server
        exec {sys.executable} -m hotswapd {shlex.join(argv)}"""
    env = dict(os.environ, PYTHONPATH=str(REPO),
               HOTSWAPD_CONTROL_SOCKET=str(tmp_path / "run" / "control.sock"))  # fmt: skip
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
                             "--mount-proc", "bash", "-c", script], capture_output=True, text=True,
                            env=env, timeout=30, check=False)  # fmt: skip
    documented, _ = doctor_findings(command.output)
    real, fails = doctor_findings(result.stdout.splitlines())
    assert result.returncode == (1 if fails else 0), result.stderr
    real_checks = {check for _, check, _ in real}
    real_shapes = {shape(line) for _, _, line in real}
    for _, check, line in documented:
        if check.split()[0] in HOST_DEPENDENT_CHECKS:
            mapped = check.replace(" /app", f" {app}")
            assert mapped in real_checks, f"{command.where()}: doctor has no '{check}' check"
        else:
            assert shape(line) in real_shapes, f"{command.where()}: doctor does not print\n{line}"
    kinds = {check.split()[0] for check in real_checks}
    for header, rows in tables(REPO / "docs" / "operations.md"):
        if header[:2] == ["check", "finding"]:
            for number, cells in rows:
                for name in spans(cells[0]):
                    assert name.split()[0] in kinds, f"operations.md:{number}: no check {name}"


@dataclass
class Session:
    """What a live hotswapd did while every documented ctl and deploy form was run against it."""

    runs: list[tuple[list[str], subprocess.CompletedProcess[str]]] = field(default_factory=list)
    logs: list[dict[str, Any]] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)
    metrics: str = ""
    versions: list[str] = field(default_factory=list)
    refusals: dict[str, str] = field(default_factory=dict)
    server_lines: list[str] = field(default_factory=list)  # what the example server printed
    answers: list[str] = field(default_factory=list)  # GET / on the shared socket
    api: dict[str, tuple[int, Any]] = field(default_factory=dict)  # route -> (status, body)
    exit_code: int | None = None


REFUSALS = ("does not exist", "is not executable", "is truncated", "neither an ELF")


def _break_program(case: str, app: Path, good: Path) -> None:
    """Put at the program path what the swap page's refusal `case` describes."""
    if case == "does not exist":
        app.unlink()
    elif case == "is not executable":
        _install(good, app, 0o644)
    elif case == "is truncated":
        _install(good, app)
        os.truncate(app, 200_000)
    else:
        app.write_text("not a program\n")
        app.chmod(0o755)


def _install(src: Path, dest: Path, mode: int = 0o755) -> None:
    temp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, temp)
    temp.chmod(mode)
    os.replace(temp, dest)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory, built: dict[str, Path]) -> Session:
    """hotswapd as PID 1 serving the docs' own builds; every ctl/deploy form the docs show runs."""
    tmp = tmp_path_factory.mktemp("live")
    app, cfg, sock = tmp / "app" / "server", tmp / "app" / "config.yaml", tmp / "control.sock"
    app.parent.mkdir()
    _install(built["build/bin/server"], app)
    cfg.write_text("greeting: hello\n")
    v2, bad = built["build/v2/server"], built["build/bad/server"]
    record = Session()
    run = Hotswapd(["--listen", "http=tcp://127.0.0.1:0", "--health", "/healthz", "--settle",
                    "100ms", "--health-timeout", "1s", "--drain-timeout", "5s", "--control-socket",
                    str(sock), "--metrics", "127.0.0.1:0", "--watch", f"{cfg}=signal:HUP"],
                   [str(app), "-config", str(cfg)])  # fmt: skip

    def hotswapd(*args: str) -> subprocess.CompletedProcess[str]:
        result = cli(*args, env={"HOTSWAPD_CONTROL_SOCKET": str(sock)})
        record.runs.append((list(args), result))
        return result

    def get(path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return str(answer.read().decode().strip())

    def swaps_finished(count: int) -> None:
        run.wait_event("swap_finished", count=count, timeout=20)

    try:
        run.wait_event("supervising")
        run.wait_stdout("ready pid=")
        port = run.port("http")
        hotswapd("ctl", "rollback", "--wait")  # nothing committed yet: refused
        hotswapd("ctl", "reload", "--wait")  # 1 committed
        record.tables.append(hotswapd("ctl", "status").stdout)
        hotswapd("deploy", str(v2))  # 2 committed
        record.versions.append(get("/version"))
        record.answers.append(get("/"))
        hotswapd("deploy", "--no-reload", str(bad), str(app))
        hotswapd("ctl", "reload", "--wait")  # 3 rolled back
        record.versions.append(get("/version"))
        record.status = json.loads(hotswapd("ctl", "status", "--json").stdout)
        for case in REFUSALS:
            _break_program(case, app, v2)
            record.refusals[case] = hotswapd("ctl", "reload", "--wait").stderr.strip()
        hotswapd("deploy", str(v2), str(app))
        half = tmp / "half-uploaded"
        shutil.copyfile(v2, half)
        os.truncate(half, v2.stat().st_size // 2)
        half.chmod(0o755)
        hotswapd("deploy", str(half))
        os.replace(cfg, tmp / "old.yaml")
        cfg.write_text("greeting: hi\n")
        run.wait_event("watch_fired")
        os.utime(cfg)
        run.wait_event("watch_ignored", cause="touch_only")
        hotswapd("ctl", "signal", "HUP")
        hotswapd("ctl", "signal", "BOGUS")
        code, output = run_cli_as("nobody", "ctl", "--control-socket", str(sock), "status")
        record.runs.append((["ctl", "status"], subprocess.CompletedProcess([], code, "", output)))
        nothing = cli("ctl", "status", env={"HOTSWAPD_CONTROL_SOCKET": str(tmp / "none.sock")})
        record.runs.append((["ctl", "status"], nothing))
        finished = len(run.events("swap_finished"))
        hotswapd("ctl", "reload")
        hotswapd("ctl", "reload")  # joins the running swap as its follow-up
        swaps_finished(finished + 2)
        hotswapd("ctl", "rollback")
        swaps_finished(finished + 3)
        for route, body in (
            ("status", None),
            ("signal", {"signal": "HUP"}),
            ("signal", {"signal": "BOGUS"}),
            ("reload", {"wait": False}),
        ):
            record.api[f"{route} {body}"] = _api(sock, route, body)
        swaps_finished(finished + 4)
        record.tables.append(hotswapd("ctl", "status").stdout)
        address = run.wait_event("metrics_listening")["address"]
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
            record.metrics = answer.read().decode()
        run.signal(signal.SIGTERM)
        record.exit_code = run.wait(30)
    finally:
        run.kill_tree()
        record.logs = list(run.logs)
        record.server_lines = [*run.stdout_lines, *run.stderr_lines]
    record.runs += _deploy_failures(tmp, v2)
    return record


def _api(sock: Path, route: str, body: dict[str, Any] | None) -> tuple[int, Any]:
    """One request to the control socket's HTTP API with curl, as operations.md shows it."""
    data = [] if body is None else ["-X", "POST", "-d", json.dumps(body)]
    argv = ["curl", "-s", "--unix-socket", str(sock), *data, "-w", "\n%{http_code}"]
    result = subprocess.run([*argv, f"http://hotswapd/{route}"], capture_output=True, text=True,
                            timeout=30, check=True)  # fmt: skip
    text, _, code = result.stdout.rpartition("\n")
    return int(code), json.loads(text)


def _deploy_failures(tmp: Path, src: Path) -> list[tuple[list[str], Any]]:
    """`deploy` onto a full tmpfs and onto a single-file bind mount, in a private mount ns."""
    full, bound = tmp / "full", tmp / "bound"
    full.mkdir()
    bound.mkdir()
    (bound / "server").write_text("")
    (tmp / "outside").write_text("")
    script = f"""
        mount -t tmpfs -o size=256k tmpfs {full}
        mount --bind {tmp / "outside"} {bound / "server"}
        {sys.executable} -m hotswapd deploy --no-reload {src} {full / "server"}; echo "rc=$?"
        {sys.executable} -m hotswapd deploy --no-reload {src} {bound / "server"}; echo "rc=$?"
    """
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c",
                             script], capture_output=True, text=True, timeout=60, check=False,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))  # fmt: skip
    assert result.stdout.count("rc=1") == 2, result.stdout + result.stderr
    return [(["deploy", "--no-reload", str(src), "DEST"],
             subprocess.CompletedProcess([], 1, "", line + "\n"))
            for line in result.stderr.splitlines()
            if line.startswith("hotswapd: deploy:")]  # fmt: skip


def _form(argv: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """What kind of ctl/deploy call a command is: its (sub)command, switches and arg count."""
    words = list(argv)
    if "--control-socket" in words:
        index = words.index("--control-socket")
        del words[index : index + 2]
    head = words[:2] if words[0] == "ctl" else words[:1]
    rest = words[len(head) :]
    switches = sorted(w for w in rest if w.startswith("--"))
    return (*head, *switches, str(len(rest) - len(switches)))


def documented_calls() -> list[tuple[str, list[str], Command | None]]:
    """Every ctl/deploy call in the docs: shell blocks and concrete prose spans."""
    calls: list[tuple[str, list[str], Command | None]] = []
    for command in all_commands():
        for invocation in invocations(command):
            if invocation.argv[:1] in (["ctl"], ["deploy"]):
                calls.append((command.where(), invocation.argv, command))
    for page in PAGES:
        for line, span in inline_code(page):
            words = span.split()
            concrete = len(words) >= 3 and not re.search(r"[A-Z]{3,}|\.\.\.|…|\[", span)
            if words[:2] in (["hotswapd", "ctl"], ["hotswapd", "deploy"]) and concrete:
                calls.append((f"{rel(page)}:{line}", words[1:], None))
    return calls


def test_every_ctl_and_deploy_form_shown_was_run(session: Session) -> None:
    """Each form of `hotswapd ctl`/`deploy` in the docs ran live, and hotswapd then exited 0."""
    ran = {_form(argv) for argv, _ in session.runs}
    for where, argv, _ in documented_calls():
        assert _form(argv) in ran, f"{where}: hotswapd {' '.join(argv)} was never run"
    assert session.exit_code == 0, "SIGTERM: the server drained and exited 0"


def test_transcripts_match_what_hotswapd_prints(session: Session) -> None:
    """Each `$ hotswapd ctl|deploy` transcript is what a real run printed, and exits the same."""
    compared = 0
    for where, argv, command in documented_calls():
        if command is None or not command.output or argv[:2] == ["ctl", "status"]:
            continue
        head = argv[:2] if argv[0] == "ctl" else argv[:1]
        expected = shapes(command.output)
        outputs = [(shapes([*r.stdout.splitlines(), *r.stderr.splitlines()]), r.returncode)
                   for a, r in session.runs if a[: len(head)] == head]  # fmt: skip
        matches = [code for real, code in outputs if real == expected]
        closest = "\n".join(min((real for real, _ in outputs),
                                key=lambda real: len(set(real) ^ set(expected))))  # fmt: skip
        assert matches, f"{where}: no real run printed this; the closest:\n{closest}"
        if command.exit_code is not None:
            assert command.exit_code in matches, f"{where}: exit status {command.exit_code}"
        compared += 1
    assert compared >= 8


def test_messages_shown_are_what_hotswapd_prints(session: Session) -> None:
    """Every `hotswapd: …` line and `committed: …` result the docs show was printed for real."""
    printed = {shape(line) for _, r in session.runs for line in (r.stdout + r.stderr).splitlines()}
    shown: list[tuple[str, str]] = []
    for block in all_blocks():
        if block.lang not in SHELL_LANGS:
            for offset, line in enumerate(block.text.splitlines(), 1):
                if line.startswith("hotswapd: "):
                    shown.append((block.where(offset), line))
    for page in PAGES:
        for number, span in inline_code(page):
            if span.startswith("committed: generation"):
                shown.append((f"{rel(page)}:{number}", span))
    assert len(shown) >= 10
    for where, line in shown:
        assert shape(line) in printed, f"{where}: hotswapd never printed\n{line}"


def test_status_table_has_the_documented_layout(session: Session) -> None:
    """The `ctl status` table has the documented header, counters and watch lines."""
    page = REPO / "docs" / "operations.md"
    shown = [c for c in all_commands(page) if c.words == ("hotswapd", "ctl", "status")]
    shown_lines = [line for c in shown for line in c.output]
    shown_lines += [line for block in read_page(page)[0] if block.text.startswith("last swap:")
                    for line in block.text.splitlines()]  # fmt: skip
    real_lines = [line for table in session.tables for line in table.splitlines()]
    header = next(line for line in shown_lines if "GEN" in line)
    assert header in real_lines, f"table header changed:\n{header}"

    def names(line: str) -> list[str]:
        parts = line.split(":", 1)[-1].split(",")
        return [re.sub(r"\s*[\d.]+s?$", "", part.strip()) for part in parts]

    real_counters = [names(line) for line in real_lines if line.startswith("counters:")]
    for line in shown_lines:
        if line.startswith("counters:"):
            assert names(line) in real_counters, f"counters: {names(line)} / {real_counters}"
    real_phases = {name for line in real_lines if line.startswith("  checked")
                   for name in names(line)}  # fmt: skip
    for line in shown_lines:
        if line.startswith("  checked"):
            assert set(names(line)) <= real_phases, f"phases: {names(line)} / {real_phases}"
    watch_lines = [line for line in shown_lines if line.startswith("watch: auto")]
    assert watch_lines, "operations.md shows no `watch: auto` line"
    assert set(watch_lines) <= set(real_lines)
    keys = {tuple(re.findall(r"(\w+) [^,)]*", line.split("(", 1)[1]))
            for line in real_lines if line.startswith("  /")}  # fmt: skip
    for line in shown_lines:
        if line.startswith("  /"):
            assert tuple(re.findall(r"(\w+) [^,)]*", line.split("(", 1)[1])) in keys, line


def test_status_json_keys_are_real(session: Session) -> None:
    """`ctl status --json` as documented: real keys and types, and a health rollback's phases."""
    page = REPO / "docs" / "operations.md"
    argv = ("hotswapd", "ctl", "status", "--json")
    (command,) = [c for c in all_commands(page) if c.words == argv]
    documented = json.loads("\n".join(command.output))
    assert not key_drift(documented, session.status), key_drift(documented, session.status)
    shown, real = documented["last_swap"], session.status["last_swap"]
    assert (shown["outcome"], real["outcome"]) == ("rolled_back", "rolled_back")
    assert list(shown["phases"]) == list(real["phases"]), "the phases of a health rollback"
    for header, rows in tables(page):
        if header[:2] == ["key", "meaning"]:
            for line, cells in rows:
                for key in spans(cells[0]):
                    node: Any = session.status
                    for part in key.replace("[]", "").split("."):
                        assert isinstance(node, dict), f"operations.md:{line}: {key}"
                        assert part in node, f"operations.md:{line}: no {key}"
                        node = node[part]


def test_metrics_named_are_scraped(session: Session) -> None:
    """Each metric operations.md names is in a real scrape, with the documented type and labels."""
    families = {f.name: f for f in text_string_to_metric_families(session.metrics)}
    samples = {(s.name, frozenset(s.labels) - {"le"}) for f in families.values() for s in f.samples}
    sample_names = {name for name, _ in samples}
    text = (REPO / "docs" / "operations.md").read_text()
    for name in set(re.findall(r"\b(hotswapd_[a-z_]+)\b", text)):
        assert name in families or name in sample_names, f"operations.md: no metric {name}"
    for header, rows in tables(REPO / "docs" / "operations.md"):
        if header[:3] != ["metric", "type", "labels"]:
            continue
        for line, cells in rows:
            for name in spans(cells[0]):
                if name.endswith("*"):
                    assert any(f.startswith(name[:-1]) for f in families), f"{line}: no {name}"
                    continue
                family = families.get(name) or families[name.removesuffix("_total")]
                if not cells[1]:
                    continue
                assert family.type == cells[1], f"{line}: {name} is a {family.type}"
                labels = {lbl for s in family.samples for lbl in s.labels} - {"le"}
                assert labels == set(spans(cells[2])), f"{line}: {name} has labels {labels}"
    for block in read_page(REPO / "docs" / "operations.md")[0]:
        for text in block.text.splitlines():
            if match := re.match(r"^(hotswapd_\w+)(?:\{(.*)\})? ", text):
                names = frozenset(re.findall(r"(\w+)=", match.group(2) or ""))
                assert (match.group(1), names) in samples, f"{block.where()}: {text}"


def test_log_lines_shown_have_real_keys(session: Session) -> None:
    """Every JSON log line shown parses, and uses only keys hotswapd logs for that event."""
    real_keys: dict[str, set[str]] = {}
    for entry in session.logs:
        real_keys.setdefault(entry["event"], set()).update(entry)
    compared = 0
    for block in all_blocks():
        try:
            lines = list(json_logs(block.text))
        except AssertionError as exc:
            raise AssertionError(f"{block.where()}: {exc}") from None
        for offset, entry in lines:
            event = entry["event"]
            assert emitted(event), f"{block.where(offset + 1)}: hotswapd never logs {event}"
            if event in real_keys:
                extra = set(entry) - real_keys[event]
                assert not extra, f"{block.where(offset + 1)}: {event} has no keys {extra}"
                compared += 1
    assert compared >= 15


def test_swap_page_refusals_and_rollbacks_are_real(session: Session) -> None:
    """The swap page's rollback table and the health-check reason quoted anywhere are real."""
    page = REPO / "docs" / "swap.md"
    table = next(rows for header, rows in tables(page) if header[:1] == ["case"])
    reasons = {spans(cells[1])[0] for _, cells in table}
    codes = {spans(cells[1])[0]: spans(cells[2])[0] for _, cells in table}
    for case, stderr in session.refusals.items():
        documented = next(r for r in reasons if r.startswith("swap refused") and case in r)
        pattern = re.escape(shape(documented)).replace("…", ".*?")
        assert re.search(pattern, shape(stderr)), f"swap.md: '{documented}' but really: {stderr}"
        prefix = shape(documented).split("…")[0].rstrip()
        # nothing was started: a refusal, not a rollback, under the code the table shows
        logged = [e for e in session.logs if e["event"] == "swap_refused"]
        matching = [e for e in logged if prefix in shape(e["reason"])]
        assert matching, f"no swap_refused: {documented}"
        assert matching[0]["code"] == codes[documented], f"swap.md: code of '{documented}'"
    (real,) = {e["reason"] for e in session.logs
               if e["event"] == "swap_rolled_back" and "health check" in e["reason"]}  # fmt: skip
    for page in PAGES:
        for match in re.finditer(r"health check http\S+ did not pass within [^)]*\)",
                                 page.read_text()):  # fmt: skip
            documented = match.group(0).replace("PORT", "1")
            assert shape(documented) == shape(real), f"{rel(page)}: {documented!r} / {real!r}"


def test_quickstart_builds_swap_as_the_quickstart_says(session: Session) -> None:
    """The v2 build serves `v2` after the swap; the broken build is rolled back, v2 still serves."""
    assert session.versions == ["v2", "v2"]
    outcomes = [e["outcome"] for e in session.logs if e["event"] == "swap_finished"]
    assert outcomes[:3] == ["committed", "committed", "rolled_back"]


def test_example_server_lines_shown_are_what_it_prints(session: Session) -> None:
    """The example server's own lines and answers in the docs are what the v2 build printed."""
    printed = {shape(line) for line in session.server_lines if not line.startswith("{")}
    shown = [(block.where(offset), line) for block in all_blocks("text")
             for offset, line in enumerate(block.text.splitlines(), 1)
             if line.startswith(("server v", "ready pid="))]  # fmt: skip
    assert len(shown) >= 4
    for where, line in shown:
        assert shape(line) in printed, f"{where}: the example server never printed\n{line}"
    answers = {shape(answer) for answer in session.answers}
    for page in PAGES:
        for number, span in inline_code(page):
            if span.startswith("hello from"):
                assert shape(span) in answers, f"{rel(page)}:{number}: GET / answers {answers}"


def test_control_api_table_is_what_the_socket_answers(session: Session) -> None:
    """operations.md's HTTP API table: status codes and answer keys of the real control socket."""
    status_code, status = session.api["status None"]
    assert status_code == 200
    assert set(status) == set(session.status)
    rows = next(rows for header, rows in tables(REPO / "docs" / "operations.md")
                if header[:2] == ["request", "answer"])  # fmt: skip
    by_route = {"POST /signal": "signal {'signal': 'HUP'}",
                "POST /reload": "reload {'wait': False}"}  # fmt: skip
    checked = 0
    for number, cells in rows:
        answer = spans(cells[1])
        for request, key in by_route.items():
            if request in spans(cells[0]) and answer[0].startswith("202 "):
                code, body = session.api[key]
                shown = json.loads(re.sub(r"\b[NP]\b", "0", answer[0].removeprefix("202 ")))
                assert code == 202, f"operations.md:{number}: {request} answered {code}"
                assert set(shown) == set(body), f"operations.md:{number}: {request}: {body}"
                checked += 1
        if "400" in answer:
            assert session.api["signal {'signal': 'BOGUS'}"][0] == 400, f"operations.md:{number}"
            checked += 1
    assert checked == 3


def shipped_values() -> dict[str, set[str]]:
    """Every setting of the shipped Dockerfile, compose and Kubernetes files: key -> values."""
    values: dict[str, set[str]] = {}
    stages = dockerfile_stages((REPO / "docker" / "Dockerfile").read_text())
    for stage in stages:
        for key, value in env_assignments(stage).items():
            values.setdefault(key, set()).add(value)

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, dict):
            if set(node) == {"name", "value"}:  # an env list entry
                values.setdefault(node["name"], set()).add(node["value"])
            for key, child in node.items():
                walk(child, (*path, key))
        elif isinstance(node, list):
            for child in node:
                walk(child, path)
        elif path:
            for depth in (1, 2):
                values.setdefault(".".join(path[-depth:]), set()).add(str(node))

    ports: dict[str, str] = {}
    for name in ("compose.yaml", "kubernetes.yaml"):
        for document in parse_yaml((REPO / "docker" / name).read_text()):
            walk(document, ())
            for container in _containers(document):
                ports.update({p["name"]: p["containerPort"] for p in container.get("ports", [])})
    for key in ("targetPort", "ports.targetPort"):  # a named port is its containerPort too
        values[key] |= {ports[v] for v in values.get(key, set()) if v in ports}
    return values


def _containers(document: Any) -> list[dict[str, Any]]:
    spec = document.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("containers", []))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_settings_quoted_from_the_shipped_files_match(page: Path) -> None:
    """A `KEY=VALUE` or `key: value` the prose quotes from the shipped files is what they set."""
    values = shipped_values()
    for number, span in inline_code(page):
        match = re.fullmatch(r"([A-Z_][A-Z0-9_]*)=(\S+)|([a-z][\w.]*): (\S+)", span)
        if not match:
            continue
        key, value = match.group(1, 2) if match.group(1) else match.group(3, 4)
        if key in values:
            assert value in values[key], f"{rel(page)}:{number}: {span}, really {values[key]}"


def test_grace_period_arithmetic_is_the_pods() -> None:
    """containers.md's grace period sum uses the pod's preStop, timeouts and grace period."""
    (kube_text,) = [b.text for b in all_blocks("text") if "terminationGracePeriodSeconds" in b.text]
    numbers = re.search(r"preStop sleep (\d+) s \+ --drain-timeout (\d+) s \+ --stop-timeout "
                        r"(\d+) s = (\d+) s\s+<\s+terminationGracePeriodSeconds: (\d+)",
                        kube_text)  # fmt: skip
    assert numbers, kube_text
    sleep, drain, stop, total, grace = (int(n) for n in numbers.groups())
    assert sleep + drain + stop == total < grace
    deployment = next(d for d in parse_yaml((REPO / "docker" / "kubernetes.yaml").read_text())
                      if d["kind"] == "Deployment")  # fmt: skip
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = run_config(container["command"][1:])
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert (sleep, drain, stop) == (int(pre_stop[1]), config.drain_timeout, config.stop_timeout)
    assert grace == int(pod["terminationGracePeriodSeconds"])


def test_swap_phase_events_carry_the_documented_fields(session: Session) -> None:
    """swap.md: each phase of the diagram is a `swap_<phase>` event with the fields it lists."""
    page = REPO / "docs" / "swap.md"
    prose = " ".join(read_page(page)[1].split())
    sentence = re.search(r"one log event \(`swap_<phase>`\) with (.+?):", prose)
    assert sentence, "swap.md no longer says which fields a phase event has"
    (diagram,) = [b for b in read_page(page)[0] if "↑ commit point" in b.text]
    phases = re.findall(r"\[?([a-z_]+)\]?", diagram.text.splitlines()[0])
    fields = set(spans(sentence.group(1))) - set(phases)
    # From `spawned` on: the first phase, `checked`, runs before there is a candidate.
    for phase in phases[1:]:
        for entry in (e for e in session.logs if e["event"] == f"swap_{phase}"):
            missing = fields - set(entry)
            assert not missing, f"{diagram.where()}: swap_{phase} has no {sorted(missing)}"
    seen = {e["event"] for e in session.logs}
    assert {f"swap_{p}" for p in ("checked", "spawned", "ready", "cutover")} <= seen
