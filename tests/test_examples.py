"""The shipped Dockerfile, compose and Kubernetes files and the container docs, checked by parsing.

No Docker engine or cluster runs here, so these tests read the files the way the tools
would and hold them to hotswapd's real option table: a renamed flag, a bad duration, a
grace period shorter than the timeouts it must cover, or a single-file bind mount fails
here instead of in a user's cluster.

PyYAML is not a dependency, so the YAML is read by `parse_yaml`, a strict parser for
the subset these files are written in (block mappings and sequences, plain and quoted
scalars, `|` blocks, `---` documents). It raises on anything else, so a file cannot
drift into YAML it would silently misread.
"""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import shlex
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from hotswapd import cli
from hotswapd.boot import config as hs
from hotswapd.boot import units
from hotswapd.boot.config import Config
from hotswapd.client import ctl, deploy, health
from hotswapd.errors import UsageError

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker" / "compose.yaml"
KUBERNETES = REPO / "docker" / "kubernetes.yaml"
DOCS = [REPO / "docs" / name for name in ("quickstart.md", "go-integration.md", "containers.md")]

ENTRYPOINT = ["hotswapd", "--listen", "http=tcp://0.0.0.0:8080", "--health", "/healthz", "--",
              "/app/server"]  # fmt: skip
DOCKER_STOP_DEFAULT_S = 10.0  # what `docker stop` and compose wait before SIGKILL
HOTSWAPD_RSS = 40 * 1024 * 1024  # measured: the venv's Python with hotswapd's imports loaded
KNOWN_FLAGS = {option.flag for option in hs.OPTIONS} | {"--config", "--help"}


# --------------------------------------------------------------------------- hotswapd arguments


def run_config(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    """Parse `OPTIONS -- PROGRAM ARGS` with hotswapd's own option table and value parsers."""
    options, _, command = _split_dashdash(argv)
    flags = [arg.split("=", 1)[0] for arg in options if arg.startswith("--")]
    unknown = [flag for flag in flags if flag not in KNOWN_FLAGS]
    assert not unknown, f"{argv}: no such hotswapd option {unknown}"
    assert "--config" not in flags, "examples pass options inline, not through a file"
    parser = argparse.ArgumentParser(allow_abbrev=False, add_help=False)
    hs.add_options(parser)
    namespace, extra = parser.parse_known_args(options)
    assert not extra, f"{argv}: unexpected arguments {extra}"
    try:
        return hs.build_config(namespace, command, environ or {}, require_command=bool(command))
    except UsageError as exc:
        raise AssertionError(f"{argv}: {exc}") from None


def _split_dashdash(argv: list[str]) -> tuple[list[str], bool, list[str]]:
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], True, argv[index + 1 :]
    return argv, False, []


def check_invocation(args: list[str], environ: dict[str, str] | None = None) -> None:
    """Validate one `hotswapd …` invocation (the words after `hotswapd`) by its mode."""
    try:
        if args and args[0] == "ctl":
            ctl.parser().parse_args(args[1:])
        elif args and args[0] == "deploy":
            deploy.parser().parse_args(args[1:])
        elif args and args[0] == "health":
            health.parser().parse_args(args[1:])
        elif args and args[0] == "doctor":
            run_config(args[1:], environ)
        else:
            _, dashdash, command = _split_dashdash(args)
            assert dashdash, f"{args}: the run mode is OPTIONS -- PROGRAM [ARGS...]"
            assert command, f"{args}: no PROGRAM after --"
            run_config(args, environ)
    except UsageError as exc:
        raise AssertionError(f"hotswapd {shlex.join(args)}: {exc}") from None


def hotswapd_env(environ: dict[str, str]) -> dict[str, str]:
    """The HOTSWAPD_* part of an environment, each name checked against the option table."""
    names = {option.env for option in hs.OPTIONS} | {hs.ENV_PREFIX + "CONFIG"}
    chosen = {key: value for key, value in environ.items() if key.startswith(hs.ENV_PREFIX)}
    unknown = sorted(set(chosen) - names)
    assert not unknown, f"no such hotswapd environment variable {unknown}"
    return chosen


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Stage:
    """One FROM … stage of a Dockerfile and its instructions."""

    image: str
    name: str | None
    instructions: list[tuple[str, str]]

    def all(self, keyword: str) -> list[str]:
        return [args for key, args in self.instructions if key == keyword]

    def one(self, keyword: str) -> str:
        found = self.all(keyword)
        assert len(found) == 1, f"stage {self.name or self.image}: {len(found)} {keyword} lines"
        return found[0]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """Instructions with continuation lines joined and comment lines dropped, as BuildKit does."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not current):
            continue
        if line.endswith("\\"):
            current += line[:-1].strip() + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return instructions


def arg_declarations(args: str) -> dict[str, str | None]:
    """The names an `ARG` line declares (`ARG A=1 B`), each with its default or None."""
    declared: dict[str, str | None] = {}
    for word in shlex.split(args):
        name, sep, default = word.partition("=")
        assert re.fullmatch(r"[A-Za-z_]\w*", name), f"ARG {args}: not a name: {name}"
        declared[name] = default if sep else None
    return declared


def global_args(text: str) -> dict[str, str | None]:
    """The ARGs declared before the first FROM: the only ones a FROM line may use."""
    declared: dict[str, str | None] = {}
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            break
        assert keyword == "ARG", f"only ARG may come before the first FROM, not {keyword}"
        declared.update(arg_declarations(args))
    return declared


def _resolve_from(image: str, declared: dict[str, str | None]) -> str:
    """A FROM image with `$NAME` / `${NAME}` replaced by the global ARG's default."""

    def default(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in declared, f"FROM {image}: ${name} is not an ARG before the first FROM"
        value = declared[name]
        assert value, f"FROM {image}: ARG {name} has no default, so a plain build fails"
        return value

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", default, image)


def dockerfile_stages(text: str) -> list[Stage]:
    """Split the instructions into stages, resolving global `ARG` defaults used in `FROM`."""
    declared = global_args(text)
    stages: list[Stage] = []
    for keyword, args in dockerfile_instructions(text):
        if keyword == "FROM":
            words = [word for word in args.split() if not word.startswith("--")]  # --platform
            image = _resolve_from(words[0], declared)
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(image=image, name=name, instructions=[]))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def env_assignments(stage: Stage) -> dict[str, str]:
    """Every `ENV KEY=VALUE …` of a stage, later ones winning."""
    env: dict[str, str] = {}
    for args in stage.all("ENV"):
        for word in shlex.split(args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {args}: use the KEY=VALUE form"
            env[key] = value
    return env


def healthcheck_parts(args: str) -> tuple[list[str], str | None]:
    """A HEALTHCHECK's `--name=value` options and its CMD arguments (None for NONE)."""
    match = re.fullmatch(r"((?:--\S+\s+)*)(CMD\s+(.*)|NONE)", args, re.DOTALL | re.IGNORECASE)
    assert match, f"HEALTHCHECK {args}: neither [OPTIONS] CMD … nor NONE"
    return match.group(1).split(), match.group(3)


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form instruction (a shell form would break signals)."""
    value = json.loads(args)
    assert isinstance(value, list), f"not the exec (JSON array) form: {args}"
    assert all(isinstance(word, str) for word in value)
    return [str(word) for word in value]


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def runtime(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_entrypoint_is_the_documented_one(runtime: Stage) -> None:
    """The runtime stage's ENTRYPOINT is exactly the line DESIGN.md promises, in exec form."""
    assert exec_form(runtime.one("ENTRYPOINT")) == ENTRYPOINT
    assert not runtime.all("CMD"), "a CMD would be appended to the server's arguments"


def test_entrypoint_and_image_env_use_real_options(runtime: Stage) -> None:
    """The ENTRYPOINT flags and every HOTSWAPD_* ENV parse with hotswapd's own parsers."""
    environ = hotswapd_env(env_assignments(runtime))
    config = run_config(ENTRYPOINT[1:], environ)
    assert config.command == ("/app/server",)
    assert [(spec.name, spec.port) for spec in config.listen] == [("http", 8080)]
    assert runtime.one("EXPOSE") == "8080"
    assert config.control_socket == "/run/hotswapd/control.sock"


def test_image_stop_timeout_fits_docker_stop_default(runtime: Stage) -> None:
    """hotswapd's own stop escalation ends before `docker stop` would SIGKILL the container."""
    config = run_config(ENTRYPOINT[1:], hotswapd_env(env_assignments(runtime)))
    assert config.stop_timeout < DOCKER_STOP_DEFAULT_S
    assert units.parse_signal(runtime.one("STOPSIGNAL")) == signal.SIGTERM


def test_healthcheck_is_hotswapd_health_in_exec_form(runtime: Stage) -> None:
    """HEALTHCHECK execs `hotswapd health` (a real subcommand, no shell, curl or wget) and
    gives up before its next run."""
    options, command = healthcheck_parts(runtime.one("HEALTHCHECK"))
    assert command is not None, "HEALTHCHECK NONE checks nothing"
    argv = exec_form(command)  # scratch has no /bin/sh for a shell form to run in
    assert argv == ["hotswapd", "health"], argv
    assert not {"curl", "wget"} & {PurePosixPath(word).name for word in argv}
    assert "health" in cli.SUBCOMMANDS, "the run mode would take `health` for a program"
    check_invocation(argv[1:])
    timings: dict[str, str] = {}
    for option in options:
        key, sep, value = option.removeprefix("--").partition("=")
        assert sep, f"HEALTHCHECK option {option}: use the --name=value form"
        timings[key] = value
    timeout, interval = (units.parse_duration(timings[key]) for key in ("timeout", "interval"))
    assert timeout < interval, "a check still running when the next one is due"


FROZEN = "/opt/hotswapd"  # where docker/freeze/build.sh puts hotswapd, and where it runs


def test_dockerfile_has_no_syntax_directive() -> None:
    """No `# syntax=` line: BuildKit would fetch that frontend image, which fails offline."""
    directive = re.compile(r"^\s*#\s*syntax\s*=", re.IGNORECASE)
    lines = DOCKERFILE.read_text().splitlines()
    found = [f"line {n}: {line}" for n, line in enumerate(lines, 1) if directive.match(line)]
    assert not found, found


def test_dockerfile_stages_build_static_go_and_a_lean_runtime(stages: list[Stage]) -> None:
    """Go builds statically in its own stage, hotswapd freezes in a Debian builder, and the
    runtime is scratch holding only what those two stages made."""
    assert len(stages) == 3
    go, builder, runtime = stages
    assert go.image.startswith("golang:")
    assert go.name, "the Go stage is named, so COPY --from can refer to it"
    build = " ".join(go.all("RUN"))
    for needed in ("CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version=${VERSION}"):
        assert needed in build, f"the Go build lacks {needed}"
    (go_output,) = re.findall(r"\bgo build\b.*?\s-o\s+(\S+)", build)
    assert builder.image == "debian:bookworm-slim", "the freezer bundles that release's glibc"
    assert builder.name, "the builder stage is named, so COPY --from can refer to it"
    builder_words = " ".join(builder.all("RUN")).split()
    assert {"gcc", "libcap-dev", "patchelf"} <= set(builder_words)
    assert ("docker/freeze/build.sh", FROZEN) in itertools.pairwise(builder_words), (
        f"the builder freezes hotswapd into {FROZEN}, the path it runs from"
    )
    assert runtime.image == "scratch"
    assert not runtime.all("RUN"), "scratch has no shell to RUN anything in"
    assert not runtime.all("ADD")
    copies = runtime.all("COPY")
    sources = {f"--from={builder.name}", f"--from={go.name}"}
    for copy in copies:
        froms = [word for word in copy.split() if word.startswith("--from=")]
        assert froms, f"COPY {copy}: runtime files come from the stages, not the context"
        assert froms[0] in sources, f"COPY {copy}: from a stage of this Dockerfile"
    assert f"--from={builder.name} {FROZEN} {FROZEN}" in copies
    program = ENTRYPOINT[-1]
    assert f"--from={go.name} {go_output} {program}" in copies, f"the Go server to {program}"
    path = env_assignments(runtime)["PATH"].split(":")
    assert FROZEN in path, "ENTRYPOINT and HEALTHCHECK exec a bare `hotswapd`, found by PATH"
    uid, _, gid = runtime.one("USER").partition(":")
    assert uid.isdigit(), "a numeric USER, so Kubernetes can check runAsNonRoot"
    assert uid != "0"
    assert gid == "0", "group 0, as OpenShift runs any uid, owns the writable directories"


# --------------------------------------------------------------------------- .dockerignore


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            out, index = out + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            out, index = out + ".*", index + 2
        else:
            char = pattern[index]
            out += {"*": "[^/]*", "?": "[^/]"}.get(char, re.escape(char))
            index += 1
    return re.compile(out)


def excluded(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `path` out (a pattern matches it or a parent; last wins)."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: end + 1]) for end in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = _pattern_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            verdict = not negate
    return verdict


def test_dockerignore_keeps_build_outputs_out_of_the_context(stages: list[Stage]) -> None:
    """Local binaries, venvs and caches never reach the context; what COPY needs does."""
    patterns = dockerignore_patterns()
    outputs = ("docker/server/server", ".venv/bin/python", "build/bin/server", ".git/HEAD",
               "bench/results/run.json", "hotswapd/__pycache__/config.cpython-311.pyc")  # fmt: skip
    for path in outputs:
        assert excluded(path, patterns), f"{path} would be sent to the build"
    for path in ("pyproject.toml", "hotswapd/boot/config.py", "docker/server/main.go",
                 "docker/server/go.mod", "go/go.mod", "go/listen.go"):  # fmt: skip
        assert not excluded(path, patterns), f"{path} is needed by the build"
    for stage in stages:
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            for source in copy.split()[:-1]:
                name = source.rstrip("*")
                assert not excluded(name.rstrip("/"), patterns), f"COPY {source} is ignored"


# --------------------------------------------------------------------------- YAML (the subset)


class _YamlSubset:
    """Recursive descent over indented lines; one instance per `---` document."""

    def __init__(self, lines: list[str], first_line: int) -> None:
        self.lines = lines
        self.pos = 0
        self.first_line = first_line

    def where(self) -> str:
        return f"line {self.first_line + self.pos}"

    def peek(self) -> tuple[int, str] | None:
        """The next line with content, as (indent, text without the indentation)."""
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            text = raw.strip()
            if text and not text.startswith("#"):
                if "\t" in raw[: len(raw) - len(raw.lstrip())]:
                    raise ValueError(f"{self.where()}: tab in indentation")
                return len(raw) - len(raw.lstrip(" ")), text
            self.pos += 1
        return None

    def node(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        assert line[0] == indent
        return self.sequence(indent) if _is_item(line[1]) else self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) is not None and line[0] >= indent:
            if line[0] > indent or not _is_item(line[1]):
                raise ValueError(f"{self.where()}: expected '- ' at column {indent}")
            rest = line[1][1:].lstrip()
            if not rest:
                self.pos += 1
                child = self.peek()
                if child is None or child[0] <= indent:
                    raise ValueError(f"{self.where()}: empty sequence item")
                items.append(self.node(child[0]))
            elif _KEY.match(rest):
                # "- key: value" opens a mapping whose keys line up with "key"
                column = indent + len(line[1]) - len(rest)
                self.lines[self.pos] = " " * column + rest
                items.append(self.mapping(column))
            else:
                self.pos += 1
                items.append(_scalar(rest, self.where()))
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while (line := self.peek()) is not None and line[0] >= indent:
            match = _KEY.match(line[1])
            if line[0] > indent or _is_item(line[1]) or not match:
                raise ValueError(f"{self.where()}: expected 'key:' at column {indent}")
            key = match.group(1)
            if key in result:
                raise ValueError(f"{self.where()}: duplicate key {key}")
            rest = _strip_comment(line[1][match.end() :]).strip()
            self.pos += 1
            if rest in ("|", "|-"):
                result[key] = self.literal(indent, keep_newline=rest == "|")
            elif rest:
                result[key] = _scalar(rest, self.where())
            else:
                child = self.peek()
                nested = child is not None and (
                    child[0] > indent or (child[0] == indent and _is_item(child[1]))
                )
                result[key] = self.node(child[0]) if nested and child else None
        return result

    def literal(self, indent: int, keep_newline: bool) -> str:
        block: list[str] = []
        while self.pos < len(self.lines):
            raw = self.lines[self.pos]
            if raw.strip() and len(raw) - len(raw.lstrip(" ")) <= indent:
                break
            block.append(raw)
            self.pos += 1
        while block and not block[-1].strip():
            block.pop()
        width = min(len(raw) - len(raw.lstrip(" ")) for raw in block if raw.strip())
        text = "\n".join(raw[width:] for raw in block)
        return text + "\n" if keep_newline else text


_KEY = re.compile(r"([A-Za-z0-9_.$/-]+):(?:\s|$)")


def _is_item(text: str) -> bool:
    return text == "-" or text.startswith("- ")


def _strip_comment(text: str) -> str:
    return re.split(r"\s#", text, maxsplit=1)[0]


def _scalar(text: str, where: str) -> Any:
    """A scalar, kept as a string (no YAML 1.1 typing); `{}` and `[]` are the only flow nodes."""
    if text.startswith('"'):
        end = text.index('"', 1)
        assert not _strip_comment(text[end + 1 :]).strip(), f"{where}: text after a string"
        return json.loads(text[: end + 1])
    if text.startswith("'"):
        end = text.index("'", 1)
        return text[1:end]
    value = _strip_comment(text).strip()
    if value in ("{}", "[]"):
        return {} if value == "{}" else []
    if value[0] in "[{&*!|>%@`" or value.startswith("<<"):
        raise ValueError(f"{where}: '{value}' is outside the YAML subset these files use")
    return value


def parse_yaml(text: str) -> list[Any]:
    """The documents of a YAML file written in the subset described in the module docstring."""
    documents: list[Any] = []
    lines = text.splitlines()
    start = 0
    for end in [i for i, line in enumerate(lines) if line.rstrip() == "---"] + [len(lines)]:
        parser = _YamlSubset(lines[start:end], start + 1)
        if (first := parser.peek()) is not None:
            documents.append(parser.node(first[0]))
            if parser.peek() is not None:
                raise ValueError(f"{parser.where()}: unparsed content")
        start = end + 1
    return documents


def hotswapd_lists(node: Any) -> Iterator[list[str]]:
    """Every sequence in a YAML tree that is a hotswapd command line."""
    if isinstance(node, list):
        if node and node[0] == "hotswapd":
            yield [str(word) for word in node]
        for item in node:
            yield from hotswapd_lists(item)
    elif isinstance(node, dict):
        for value in node.values():
            yield from hotswapd_lists(value)


def test_yaml_subset_parser_reads_what_the_files_use() -> None:
    """The test's YAML reader handles nesting, `- key:` items, quotes, `|` and comments."""
    text = 'a:\n  b:\n    - x  # note\n    - "5"\n  c: |\n    line one\n    line two\n'
    text += "  d:\n    - name: n\n      value: v\n  e: {}\n---\nf: 'g h'\n"
    assert parse_yaml(text) == [
        {"a": {"b": ["x", "5"], "c": "line one\nline two\n",
               "d": [{"name": "n", "value": "v"}], "e": {}}},
        {"f": "g h"},
    ]  # fmt: skip
    with pytest.raises(ValueError, match="outside the YAML subset"):
        parse_yaml("a: &anchor 1\n")


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (document,) = parse_yaml(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


HOST_BUILD = re.compile(r"CGO_ENABLED=0 go build -C (\S+) -o (\S+) \.")


def test_compose_dev_service_swaps_a_bind_mounted_directory(compose: dict[str, Any]) -> None:
    """The dev service watches the host build through a directory mount, never a file mount."""
    app = compose["services"]["app"]
    config = run_config(app["entrypoint"][1:], hotswapd_env(app.get("environment", {})))
    assert config.on_exit == "restart", "a crashing build must not end the container"
    program = PurePosixPath(config.command[0])
    assert [(w.path, w.action) for w in config.watch] == [(str(program), "swap")]
    mounts = {volume["target"]: volume for volume in app["volumes"]}
    mount = mounts.get(str(program.parent))
    assert mount is not None, f"{program.parent} must be a mounted directory"
    assert mount["type"] == "bind"
    assert not any(target in (str(program), "/app/server") for target in mounts), "a file mount"
    source = (COMPOSE.parent / mount["source"]).resolve()
    assert source == REPO / "build" / "bin"
    (command,) = HOST_BUILD.findall(COMPOSE.read_text())
    built = (REPO / command[0] / command[1]).resolve()
    assert built == source / program.name, "the documented build writes into the mount"
    assert units.parse_duration(app["stop_grace_period"]) > config.stop_timeout


def test_compose_only_dev_entrypoint_overrides_the_image(compose: dict[str, Any]) -> None:
    """Every hotswapd command line in compose.yaml parses; the other service keeps the image's."""
    lists = list(hotswapd_lists(compose))
    assert len(lists) == 1
    for service in compose["services"].values():
        assert "command" not in service, "CMD words would become the server's arguments"


def test_compose_watch_alternative_sees_its_path(compose: dict[str, Any]) -> None:
    """The develop.watch rule watches a path that exists and that .dockerignore does not hide."""
    services = [s for s in compose["services"].values() if "develop" in s]
    assert len(services) == 1
    (service,) = services
    assert service["profiles"] == ["desktop"], "opt-in, so `up` starts the dev service only"
    patterns = dockerignore_patterns()
    for rule in service["develop"]["watch"]:
        assert rule["action"] in {"rebuild", "sync", "sync+restart"}
        path = (COMPOSE.parent / rule["path"]).resolve()
        assert path.exists()
        relative = path.relative_to(REPO).as_posix()
        assert not excluded(relative, patterns), "compose watch skips .dockerignore'd paths"
    assert units.parse_duration(service["stop_grace_period"]) > units.parse_duration(
        env_assignments(dockerfile_stages(DOCKERFILE.read_text())[-1])["HOTSWAPD_STOP_TIMEOUT"]
    )


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def kube() -> dict[str, dict[str, Any]]:
    documents = parse_yaml(KUBERNETES.read_text())
    by_kind = {document["kind"]: document for document in documents}
    assert sorted(by_kind) == ["ConfigMap", "Deployment", "Service"]
    return by_kind


def _container(kube: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = kube["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _kube_config(container: dict[str, Any]) -> Config:
    environ = {item["name"]: item["value"] for item in container.get("env", [])}
    return run_config(container["command"][1:], hotswapd_env(environ))


def test_kubernetes_command_uses_real_options(kube: dict[str, dict[str, Any]]) -> None:
    """The pod's hotswapd line parses and keeps the image's listener, health path and program."""
    container = _container(kube)
    assert list(hotswapd_lists(kube)) == [container["command"]]
    config = _kube_config(container)
    assert container["command"][: len(ENTRYPOINT) - 2] == ENTRYPOINT[:-2]
    assert config.command[0] == "/app/server"
    assert config.control_socket is not None


def test_kubernetes_grace_period_outlasts_drain_and_stop(kube: dict[str, dict[str, Any]]) -> None:
    """terminationGracePeriodSeconds covers preStop + --drain-timeout + --stop-timeout."""
    pod = kube["Deployment"]["spec"]["template"]["spec"]
    container = _container(kube)
    config = _kube_config(container)
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    budget = units.parse_duration(pre_stop[1]) + config.drain_timeout + config.stop_timeout
    assert int(pod["terminationGracePeriodSeconds"]) > budget
    server_args = list(config.command[1:])
    shutdown = units.parse_duration(server_args[server_args.index("-shutdown-timeout") + 1])
    assert shutdown < min(config.drain_timeout, config.stop_timeout)


def test_kubernetes_configmap_is_a_watched_directory(kube: dict[str, dict[str, Any]]) -> None:
    """The ConfigMap is mounted whole (no subPath) and hotswapd signals HUP when it changes."""
    container = _container(kube)
    config = _kube_config(container)
    assert "subPath" not in re.sub(r"#.*", "", KUBERNETES.read_text())
    (watch,) = config.watch
    assert watch.action == "signal"
    assert watch.signal == signal.SIGHUP
    watched = PurePosixPath(watch.path)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in kube["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[str(watched.parent)]["name"]]
    assert volume["configMap"]["name"] == kube["ConfigMap"]["metadata"]["name"]
    assert watched.name in kube["ConfigMap"]["data"]
    assert str(watched) in config.command, "the server is told which file to re-read"


def test_kubernetes_control_socket_and_probes(
    kube: dict[str, dict[str, Any]], runtime: Stage
) -> None:
    """ctl reaches its socket on an emptyDir that hotswapd accepts; both probes ask the
    listener's port and path."""
    container = _container(kube)
    config = _kube_config(container)
    # `kubectl exec … hotswapd ctl` has no flag: it finds the socket through the image's ENV.
    assert config.control_socket == env_assignments(runtime)["HOTSWAPD_CONTROL_SOCKET"]
    socket_dir = PurePosixPath(config.control_socket).parent
    mounts = {PurePosixPath(m["mountPath"]): m for m in container["volumeMounts"]}
    # The mount that holds the directory: the deepest one at it or above it.
    holding = [path for path in mounts if path == socket_dir or path in socket_dir.parents]
    assert holding, f"{socket_dir} is on the read-only root filesystem"
    mount = mounts[max(holding, key=lambda path: len(path.parts))]
    assert mount.get("readOnly", "false") == "false", "hotswapd must create its directory there"
    volumes = {v["name"]: v for v in kube["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mount["name"]]
    # An emptyDir is 0777 without the sticky bit: hotswapd refuses it as the socket's own
    # directory (anyone could replace the socket), and makes its 0700 one inside it.
    assert PurePosixPath(mount["mountPath"]) != socket_dir, "mount a parent of the directory"
    ports = {p["name"]: int(p["containerPort"]) for p in container["ports"]}
    (listen,) = config.listen
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == config.health
        assert ports.get(get["port"], get["port"]) == listen.port
    service_port = kube["Service"]["spec"]["ports"][0]
    assert ports[service_port["targetPort"]] == listen.port


def test_kubernetes_memory_limit_holds_two_generations(kube: dict[str, dict[str, Any]]) -> None:
    """The memory limit fits hotswapd plus two servers at GOMEMLIMIT each (both run mid-swap)."""
    container = _container(kube)
    limit = units.parse_size(container["resources"]["limits"]["memory"])
    environ = {item["name"]: item["value"] for item in container["env"]}
    assert limit >= HOTSWAPD_RSS + 2 * units.parse_size(environ["GOMEMLIMIT"])


def test_kubernetes_runs_as_the_images_user(
    kube: dict[str, dict[str, Any]], runtime: Stage
) -> None:
    """The pod's non-root uid is the image's USER, and nothing can regain privileges."""
    pod = kube["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] == "true"
    assert pod["securityContext"]["runAsUser"] == runtime.one("USER").split(":")[0]
    context = _container(kube)["securityContext"]
    assert context["allowPrivilegeEscalation"] == "false"
    assert context["readOnlyRootFilesystem"] == "true"
    assert context["capabilities"]["drop"] == ["ALL"]


# --------------------------------------------------------------------------- docs


_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_ENV_WORD = re.compile(r"^(HOTSWAPD_[A-Z_]+)=(.*)$")


def shell_lines(block: str) -> Iterator[list[str]]:
    """The words of each command in a shell block: continuations joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    for line in joined.splitlines():
        line = line.strip().removeprefix("$ ")
        if line and not line.startswith("#"):
            yield shlex.split(line, comments=True)


# `docker run` options whose value is a path (a mount's target may well be …/hotswapd)
DOCKER_RUN_PATH_VALUES = frozenset({"--tmpfs", "-v", "--volume", "--mount"})


def _is_hotswapd(word: str) -> bool:
    return word == "hotswapd" or word.endswith("/hotswapd")


def shell_invocation(words: list[str]) -> list[str] | None:
    """The words after `hotswapd` on one shell line, or None when it runs no hotswapd.

    In a `docker run` line the value of a mount option is a path, never the program,
    and `--entrypoint hotswapd IMAGE ARGS` runs hotswapd with ARGS. A word starting
    with `-` is an option (`--tmpfs=/run/hotswapd`), never the program either.
    """
    docker_run = ("docker", "run") in itertools.pairwise(words)
    value_next = False
    for index, word in enumerate(words):
        if value_next:
            value_next = False
        elif docker_run and word in DOCKER_RUN_PATH_VALUES:
            value_next = True
        elif docker_run and (word == "--entrypoint" or word.startswith("--entrypoint=")):
            entrypoint = word.partition("=")[2] or words[index + 1]
            if not _is_hotswapd(entrypoint):
                return None
            image = index + (1 if "=" in word else 2)
            assert not words[image].startswith("-"), (
                f"{words}: the test expects `--entrypoint hotswapd IMAGE`, the image next"
            )
            return words[image + 1 :]
        elif not word.startswith("-") and _is_hotswapd(word):
            return words[index + 1 :]
    return None


def doc_invocations(text: str) -> Iterator[tuple[list[str], dict[str, str]]]:
    """Every hotswapd invocation in a page's code blocks, with the HOTSWAPD_* set beside it."""
    for lang, block in _FENCE.findall(text):
        if lang in ("", "sh", "shell", "bash", "console"):
            for words in shell_lines(block):
                matches = [m for w in words if (m := _ENV_WORD.match(w))]
                env = hotswapd_env({m.group(1): m.group(2) for m in matches})
                run_config(ENTRYPOINT[1:], env)  # a `-e HOTSWAPD_…` on any command line
                if (argv := shell_invocation(words)) is not None:
                    yield argv, env
        elif lang == "dockerfile":
            for keyword, args in dockerfile_instructions(block):
                if keyword == "HEALTHCHECK":
                    args = healthcheck_parts(args)[1] or ""
                if keyword in ("ENTRYPOINT", "CMD", "RUN", "HEALTHCHECK") and args.startswith("["):
                    argv = exec_form(args)
                    if argv and argv[0] == "hotswapd":
                        yield argv[1:], {}
                elif keyword == "ENV":
                    stage = Stage(image="", name=None, instructions=[(keyword, args)])
                    run_config(ENTRYPOINT[1:], hotswapd_env(env_assignments(stage)))
        elif lang == "yaml":
            for document in parse_yaml(block):
                for argv in hotswapd_lists(document):
                    yield argv[1:], {}


def test_docker_run_mount_values_are_not_invocations() -> None:
    """A mount target ending in /hotswapd is a value; `--entrypoint hotswapd IMAGE` is a call."""
    mounts = "docker run --tmpfs /run/hotswapd -v v:/opt/hotswapd --mount dst=/x/hotswapd"
    assert shell_invocation(shlex.split(f"{mounts} --tmpfs=/run/hotswapd img -x")) is None
    line = f"{mounts} --entrypoint hotswapd img ctl status"
    assert shell_invocation(shlex.split(line)) == ["ctl", "status"]
    assert shell_invocation(shlex.split("docker exec app /opt/hotswapd/hotswapd health")) == [
        "health"
    ]


@pytest.mark.parametrize("page", DOCS, ids=[page.name for page in DOCS])
def test_docs_commands_use_real_flags(page: Path) -> None:
    """Every hotswapd command line and HOTSWAPD_* setting shown in the page parses."""
    found = list(doc_invocations(page.read_text()))
    assert found, f"{page.name} shows no hotswapd command"
    for argv, environ in found:
        check_invocation(argv, environ)


Function = ast.FunctionDef | ast.AsyncFunctionDef
PREFIX = "swap_"  # a swap phase is logged as "swap_" + its name


def _parameters(function: Function) -> list[str]:
    """Positional parameter names as callers pass them (`self` / `cls` left out)."""
    names = [arg.arg for arg in function.args.posonlyargs + function.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _is_method(function: Function) -> bool:
    return [arg.arg for arg in function.args.args][:1] in (["self"], ["cls"])


def _callee(call: ast.Call) -> tuple[str, bool] | None:
    """(name, called as a method): `self._phase(…)` is not the module function `_phase(…)`."""
    if isinstance(call.func, ast.Attribute):
        return call.func.attr, True
    if isinstance(call.func, ast.Name):
        return call.func.id, False
    return None


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    if index < len(call.args):
        return call.args[index]
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _prefixed_parameter(node: ast.AST, parameters: list[str]) -> str | None:
    """The parameter when `node` is `"swap_" + parameter`, else None."""
    if not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add)):
        return None
    left, right = node.left, node.right
    prefixed = isinstance(left, ast.Constant) and left.value == PREFIX
    if prefixed and isinstance(right, ast.Name) and right.id in parameters:
        return right.id
    return None


def phase_names(trees: list[ast.Module]) -> set[str]:
    """Every string that reaches a function logging `"swap_" + parameter`, literally or
    forwarded.

    The swap logs each phase as "swap_" + name, and a helper may take the name as its
    own parameter and pass it on (`_memory(what, phase)` → `_phase(phase)`): such a
    helper becomes a sink itself, until no new one turns up. Calls are matched by name
    and by method-or-function, not by type.
    """
    functions = [node for tree in trees for node in ast.walk(tree)
                 if isinstance(node, Function)]  # fmt: skip
    sinks: dict[tuple[str, bool], tuple[int, str]] = {}
    for function in functions:
        parameters = _parameters(function)
        for node in ast.walk(function):
            if (parameter := _prefixed_parameter(node, parameters)) is not None:
                index = parameters.index(parameter)
                sinks[function.name, _is_method(function)] = (index, parameter)
    assert sinks, f"no function in hotswapd logs {PREFIX!r} + a parameter"
    names: set[str] = set()
    grown = True
    while grown:
        grown = False
        for function in functions:
            parameters = _parameters(function)
            for call in (node for node in ast.walk(function) if isinstance(node, ast.Call)):
                callee = _callee(call)
                if callee not in sinks:
                    continue
                value = _argument(call, *sinks[callee])
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    names.add(value.value)
                elif isinstance(value, ast.Name) and value.id in parameters:
                    key = (function.name, _is_method(function))
                    if key not in sinks:
                        sinks[key] = (parameters.index(value.id), value.id)
                        grown = True
    return names


def logged_events(trees: list[ast.Module]) -> set[str]:
    """The event names hotswapd can log: its string literals, and "swap_" + each phase."""
    literals = {node.value for tree in trees for node in ast.walk(tree)
                if isinstance(node, ast.Constant) and isinstance(node.value, str)}  # fmt: skip
    return literals | {PREFIX + phase for phase in phase_names(trees)}


def package_trees() -> list[ast.Module]:
    """hotswapd/**/*.py parsed, subpackages included."""
    paths = sorted((REPO / "hotswapd").rglob("*.py"))
    assert any(len(path.relative_to(REPO / "hotswapd").parts) > 1 for path in paths)
    return [ast.parse(path.read_text(), str(path)) for path in paths]


def test_phase_scan_follows_a_forwarded_phase_name() -> None:
    """The source scan finds phases passed literally and through a helper, and nothing else."""
    source = """
def _phase(item): return item
class Swap:
    def _phase(self, name, **details): log.info("swap_" + name)
    def _gate(self, what, phase): self._phase(phase)
    def run(self, step):
        self._phase("ready")
        self._gate("the memory gate", phase="memory_ok")
        self._gate(f"step {step}", None)
        _phase("not_a_phase")
"""
    assert phase_names([ast.parse(source)]) == {"ready", "memory_ok"}


def test_docs_name_the_real_log_events() -> None:
    """Each hotswapd log event the quickstart shows is emitted somewhere in the package."""
    events_logged = logged_events(package_trees())
    text = (REPO / "docs" / "quickstart.md").read_text()
    events = set(re.findall(r'"event": ?"(\w+)"', text))
    assert events, "the quickstart shows no log lines"
    missing = sorted(events - events_logged)
    assert not missing, f"quickstart shows log events {missing}, which hotswapd never logs"


def test_docs_show_the_working_host_build() -> None:
    """The host build command in the docs is the one compose.yaml mounts (not `./docker/server`)."""
    text = (REPO / "docs" / "containers.md").read_text()
    assert HOST_BUILD.findall(text) == HOST_BUILD.findall(COMPOSE.read_text())
    assert "go build -o build/bin/server ./docker/server" not in text
