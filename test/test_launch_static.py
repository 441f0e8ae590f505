"""Static checks of the launch files, the parameter file, the RViz config and package.xml.

`launch` / `launch_ros` cannot be installed here, so the launch files are parsed with `ast`:
which executables they start, which arguments they use and declare, which files they name, and
whether those files are installed by setup.py. The parameter file is checked against the
parameters the node declares *now* (NODE_PARAMS + the core's PARAMS), and, through rclpy's own
parameter-file parser, the way the node will load it.
"""
from __future__ import annotations

import ast
import importlib
import os
import pkgutil
import runpy
import sys
import types
import warnings
import xml.etree.ElementTree as ET
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from sirenpose_ros.core.params import ParamError, ParamSpec
from sirenpose_ros.ros.node_params import NODE_PARAMS

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "sirenpose_ros"
LAUNCH_FILES = ["live.launch.py", "replay.launch.py", "multi_camera.launch.py"]
LIVE_YAML = REPO / "config" / "live.yaml"
RVIZ_FILE = REPO / "config" / "sirenpose.rviz"
FILE_SUFFIXES = (".yaml", ".yml", ".rviz", ".xml", ".launch.py")

# The user-facing interface of live.launch.py (README / DESIGN): names and defaults.
LIVE_ARGUMENTS = {
    "image_topic": "/camera/image_raw",
    "camera_info_topic": "/camera/camera_info",
    "namespace": "",
    "params_file": None,          # an installed path, checked separately
    "use_sim_time": "false",
    "log_level": "info",
    "image_transport": "raw",
    "rviz": "false",
}

# Names that exist in the ROS 2 launch API of Humble, Jazzy and Kilted (import typos otherwise
# only show up on a robot).
LAUNCH_API = {
    "launch": {"LaunchDescription", "LaunchContext", "Action", "Substitution"},
    "launch.actions": {"DeclareLaunchArgument", "EmitEvent", "ExecuteProcess", "GroupAction",
                       "IncludeLaunchDescription", "LogInfo", "OpaqueFunction",
                       "RegisterEventHandler", "SetEnvironmentVariable", "SetLaunchConfiguration",
                       "Shutdown", "TimerAction", "UnsetEnvironmentVariable"},
    "launch.conditions": {"IfCondition", "UnlessCondition", "LaunchConfigurationEquals",
                          "LaunchConfigurationNotEquals"},
    "launch.substitutions": {"LaunchConfiguration", "PythonExpression", "PathJoinSubstitution",
                             "TextSubstitution", "EnvironmentVariable", "FindExecutable",
                             "Command", "ThisLaunchFileDir"},
    "launch.event_handlers": {"OnProcessExit", "OnProcessStart", "OnProcessIO", "OnShutdown"},
    "launch.events": {"Shutdown"},
    "launch.launch_description_sources": {"PythonLaunchDescriptionSource",
                                          "AnyLaunchDescriptionSource"},
    "launch_ros.actions": {"Node", "PushRosNamespace", "SetParameter", "SetRemap",
                           "ComposableNodeContainer", "LoadComposableNodes", "LifecycleNode"},
    "launch_ros.substitutions": {"FindPackageShare", "FindPackagePrefix", "ExecutableInPackage"},
    "launch_ros.parameter_descriptions": {"ParameterValue", "ParameterFile"},
    "launch_ros.descriptions": {"ParameterValue", "ParameterFile", "ComposableNode"},
    "ament_index_python.packages": {"get_package_share_directory", "get_package_prefix"},
}
ACTION_KWARGS = {"condition"}
PROCESS_KWARGS = ACTION_KWARGS | {
    "name", "cwd", "env", "additional_env", "shell", "sigterm_timeout", "sigkill_timeout",
    "emulate_tty", "output", "prefix", "log_cmd", "on_exit", "respawn", "respawn_delay",
    "cached_output"}
KWARGS = {
    "Node": PROCESS_KWARGS | {"executable", "package", "namespace", "exec_name", "parameters",
                              "remappings", "ros_arguments", "arguments"},
    "ExecuteProcess": PROCESS_KWARGS | {"cmd"},
    "DeclareLaunchArgument": ACTION_KWARGS | {"name", "default_value", "description", "choices"},
}
# Python libraries of ROS (not message packages) that package.xml must name when imported.
ROS_PYTHON_LIBS = {"rclpy", "launch", "launch_ros", "ament_index_python", "tf2_ros", "tf2_py",
                   "rosbag2_py", "sensor_msgs_py", "cv_bridge", "message_filters",
                   "rosidl_runtime_py", "image_transport"}


# --------------------------------------------------------------------------------- helpers
def call_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and call_name(n) == name]


class LaunchFile:
    """One launch file's syntax tree and the facts the tests need from it."""

    def __init__(self, name: str):
        self.name = name
        self.path = REPO / "launch" / name
        self.source = self.path.read_text()
        self.tree = ast.parse(self.source, filename=str(self.path))
        # Module-level string constants (PACKAGE = 'sirenpose_ros') so that names resolve.
        self.constants = {
            t.id: node.value.value
            for node in self.tree.body if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
            for t in node.targets if isinstance(t, ast.Name)}

    def text(self, node: ast.AST | None) -> str | None:
        """The string a node stands for, when it is a literal or a module constant."""
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return self.constants.get(node.id)
        return None

    def arg(self, call: ast.Call, name: str, pos: int | None = None) -> ast.AST | None:
        for kw in call.keywords:
            if kw.arg == name:
                return kw.value
        if pos is not None and len(call.args) > pos:
            return call.args[pos]
        return None

    def where(self, node: ast.AST) -> str:
        return f"{self.path.relative_to(REPO)}:{node.lineno}"

    def declared(self) -> dict[str, ast.Call]:
        out = {}
        for c in calls(self.tree, "DeclareLaunchArgument"):
            name = self.text(self.arg(c, "name", 0))
            assert name is not None, f"{self.where(c)}: DeclareLaunchArgument name is not a literal"
            assert name not in out, f"{self.where(c)}: launch argument '{name}' declared twice"
            out[name] = c
        return out

    def used(self) -> dict[str, ast.Call]:
        out = {}
        for c in calls(self.tree, "LaunchConfiguration"):
            name = self.text(self.arg(c, "variable_name", 0))
            assert name is not None, f"{self.where(c)}: LaunchConfiguration name is not a literal"
            out.setdefault(name, c)
        return out

    def default(self, name: str) -> ast.AST | None:
        return self.arg(self.declared()[name], "default_value")

    def file_references(self) -> list[tuple[str, ast.AST]]:
        """Package files named as trailing literal parts of a path join, e.g.
        os.path.join(share, 'config', 'live.yaml') or PathJoinSubstitution([..., 'x.rviz'])."""
        refs = []
        for c in (n for n in ast.walk(self.tree) if isinstance(n, ast.Call)):
            for parts in (c.args, *[a.elts for a in c.args if isinstance(a, (ast.List, ast.Tuple))]):
                texts = [self.text(p) for p in parts]
                if not texts or texts[-1] is None or not texts[-1].endswith(FILE_SUFFIXES):
                    continue
                tail = []
                for t in reversed(texts):
                    if t is None:
                        break
                    tail.insert(0, t)
                refs.append(("/".join(tail).lstrip("/"), c))
        return refs

    def included(self) -> list[tuple[str, ast.Call]]:
        """(launch file name, IncludeLaunchDescription call) for every include."""
        out = []
        for c in calls(self.tree, "IncludeLaunchDescription"):
            names = [ref for ref, node in self.file_references()
                     if ref.endswith(".launch.py") and any(n is node for n in ast.walk(c))]
            assert len(names) == 1, f"{self.where(c)}: cannot tell which launch file is included"
            out.append((Path(names[0]).name, c))
        return out

    def include_arguments(self, include: ast.Call) -> dict[str, ast.AST]:
        node = self.arg(include, "launch_arguments", 1)
        if node is None:
            return {}
        if isinstance(node, ast.Call) and call_name(node) == "items":   # {...}.items()
            node = node.func.value
        if isinstance(node, (ast.List, ast.Tuple)):                      # [('k', v), ...]
            pairs = [(e.elts[0], e.elts[1]) for e in node.elts]
        else:
            assert isinstance(node, ast.Dict), f"{self.where(include)}: launch_arguments form"
            pairs = list(zip(node.keys, node.values))
        out = {}
        for k, v in pairs:
            key = self.text(k)
            assert key is not None, f"{self.where(include)}: launch argument name not a literal"
            out[key] = v
        return out


@lru_cache(maxsize=None)
def launch_file(name: str) -> LaunchFile:
    return LaunchFile(name)


@lru_cache(maxsize=None)
def setup_kwargs() -> dict:
    """setup.py's arguments, taken by running it with setuptools.setup replaced (its globs are
    evaluated in the repo root, exactly as a build would)."""
    import setuptools
    captured: dict = {}
    real_setup, cwd = setuptools.setup, os.getcwd()
    setuptools.setup = lambda **kw: captured.update(kw)
    try:
        os.chdir(REPO)
        runpy.run_path(str(REPO / "setup.py"))
    finally:
        setuptools.setup = real_setup
        os.chdir(cwd)
    assert captured, "setup.py did not call setup()"
    return captured


def console_scripts() -> dict[str, str]:
    entries = setup_kwargs()["entry_points"]["console_scripts"]
    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}


def installed_files() -> dict[str, set[str]]:
    """Install folder (relative to the prefix) -> repo-relative files setup.py puts there."""
    out: dict[str, set[str]] = {}
    for dest, files in setup_kwargs()["data_files"]:
        out.setdefault(dest, set()).update(os.path.normpath(f) for f in files)
    return out


@lru_cache(maxsize=None)
def declared_params() -> dict[str, ParamSpec]:
    """Every parameter the node declares, read from the code at test time."""
    from sirenpose_ros.core import config
    try:
        core = config.pipeline_params()
    except ImportError as exc:
        # A core module that config.py gathers is still being written: take PARAMS from every
        # core module that imports, so the file is still checked against what exists.
        warnings.warn(f"pipeline_params() failed ({exc}); using the PARAMS of importable "
                      f"sirenpose_ros.core modules")
        import sirenpose_ros.core as core_pkg
        core = []
        for info in pkgutil.iter_modules(core_pkg.__path__):
            try:
                mod = importlib.import_module(f"sirenpose_ros.core.{info.name}")
            except ImportError:
                continue
            core.extend(getattr(mod, "PARAMS", []))
    specs: dict[str, ParamSpec] = {}
    for s in list(NODE_PARAMS) + list(core):
        assert s.name not in specs, f"parameter '{s.name}' is declared twice"
        specs[s.name] = s
    return specs


def published_topics() -> set[str]:
    """Topics node.py publishes, as absolute names in the root namespace."""
    tree = ast.parse((REPO / "sirenpose_ros/ros/node.py").read_text())
    topics = set()
    for c in calls(tree, "create_publisher"):
        if len(c.args) >= 2 and isinstance(c.args[1], ast.Constant):
            t = c.args[1].value
            topics.add(t if t.startswith("/") else "/" + t)
    return topics


def node_string_literals() -> set[str]:
    tree = ast.parse((REPO / "sirenpose_ros/ros/node.py").read_text())
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}


def replay_options() -> set[str]:
    tree = ast.parse((REPO / "sirenpose_ros/tools/replay.py").read_text())
    return {a.value for c in calls(tree, "add_argument") for a in c.args
            if isinstance(a, ast.Constant) and str(a.value).startswith("-")}


def load_live_yaml() -> dict:
    doc = yaml.safe_load(LIVE_YAML.read_text())
    assert isinstance(doc, dict) and list(doc) == ["/**"], \
        f"{LIVE_YAML.name}: top level must be exactly '/**' (any node name and namespace), got {list(doc or {})}"
    params = doc["/**"].get("ros__parameters")
    assert isinstance(params, dict) and params, f"{LIVE_YAML.name}: '/**' has no ros__parameters"
    return params


# --------------------------------------------------------------------------- launch files
@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_file_compiles_and_has_entry_point(name):
    lf = launch_file(name)
    compile(lf.source, str(lf.path), "exec")
    fns = [n for n in lf.tree.body if isinstance(n, ast.FunctionDef)
           and n.name == "generate_launch_description"]
    assert fns, f"{name}: no top-level generate_launch_description()"
    a = fns[0].args
    assert len(a.args) == len(a.defaults) and not a.posonlyargs, \
        f"{name}: generate_launch_description() must be callable without arguments"


class _Recorded:
    """Stand-in for every launch API class: records its arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_generate_launch_description_runs(name, monkeypatch):
    """Run the file against a recording stand-in of the launch API (catches name errors and
    wrong paths that parsing cannot), with the source tree as the package's share folder."""
    packages = {m.split(".")[0] for m in LAUNCH_API}
    for module in sorted(packages | set(LAUNCH_API)):
        monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    for module, names in LAUNCH_API.items():
        for n in names:
            setattr(sys.modules[module], n, type(n, (_Recorded,), {}))
    share = sys.modules["ament_index_python.packages"]
    share.get_package_share_directory = lambda pkg: str(REPO) if pkg == PACKAGE else f"/nonexistent/{pkg}"

    ns = runpy.run_path(str(REPO / "launch" / name))
    ld = ns["generate_launch_description"]()
    assert type(ld).__name__ == "LaunchDescription" and len(ld.args) == 1, f"{name}: bad return"
    entities = ld.args[0]
    declared = [e.args[0] for e in entities if type(e).__name__ == "DeclareLaunchArgument"]
    assert sorted(declared) == sorted(launch_file(name).declared()), \
        f"{name}: not every DeclareLaunchArgument is in the returned description"

    # Every path string reachable from the description is a file of this package.
    def walk(obj, seen):
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, str):
            if obj.startswith(str(REPO)) and obj.endswith(FILE_SUFFIXES):
                assert Path(obj).is_file(), f"{name}: names missing file {obj}"
                yield obj
        elif isinstance(obj, _Recorded):
            for v in (*obj.args, *obj.kwargs.values()):
                yield from walk(v, seen)
        elif isinstance(obj, (list, tuple, set)) or type(obj).__name__ == "dict_items":
            for v in obj:
                yield from walk(v, seen)
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from walk(k, seen)
                yield from walk(v, seen)
    paths = set(walk(entities, set()))
    assert paths, f"{name}: references no package file"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_imports_are_real_api(name):
    lf = launch_file(name)
    for node in ast.walk(lf.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                assert a.name.split(".")[0] not in ROS_PYTHON_LIBS or a.name in LAUNCH_API, \
                    f"{lf.where(node)}: unknown module '{a.name}'"
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] not in ("launch", "launch_ros", "ament_index_python"):
                continue
            assert node.module in LAUNCH_API, f"{lf.where(node)}: unknown launch module '{node.module}'"
            for a in node.names:
                assert a.name in LAUNCH_API[node.module], \
                    f"{lf.where(node)}: '{a.name}' is not in {node.module}"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_action_keywords_exist(name):
    lf = launch_file(name)
    for action, allowed in KWARGS.items():
        for c in calls(lf.tree, action):
            for kw in c.keywords:
                assert kw.arg in allowed, f"{lf.where(c)}: {action}() has no argument '{kw.arg}'"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_starts_only_package_executables(name):
    lf = launch_file(name)
    scripts = console_scripts()
    started = []
    for c in calls(lf.tree, "Node"):
        pkg = lf.text(lf.arg(c, "package"))
        exe = lf.text(lf.arg(c, "executable"))
        assert pkg and exe, f"{lf.where(c)}: Node needs literal package= and executable="
        if pkg == "rviz2":
            assert exe == "rviz2", f"{lf.where(c)}: rviz2 package has no executable '{exe}'"
        else:
            assert pkg == PACKAGE, f"{lf.where(c)}: Node of unexpected package '{pkg}'"
            assert exe in scripts, f"{lf.where(c)}: '{exe}' is not a console script of setup.py"
        started.append(exe)
    for c in calls(lf.tree, "ExecuteProcess"):
        cmd = lf.arg(c, "cmd")
        assert isinstance(cmd, ast.List) and cmd.elts, f"{lf.where(c)}: cmd must be a literal list"
        first = cmd.elts[0]
        if lf.text(first) in scripts:
            pytest.fail(f"{lf.where(c)}: '{lf.text(first)}' is installed in lib/{PACKAGE}, not on "
                        f"PATH: use ExecutableInPackage")
        if isinstance(first, ast.Call) and call_name(first) == "ExecutableInPackage":
            exe = lf.text(lf.arg(first, "executable", 0))
            pkg = lf.text(lf.arg(first, "package", 1))
            assert pkg == PACKAGE and exe in scripts, \
                f"{lf.where(c)}: ExecutableInPackage('{exe}', '{pkg}') is not a console script"
            started.append(exe)
    # The console scripts started must resolve to a function that exists.
    for exe in set(started) - {"rviz2"}:
        module, func = scripts[exe].split(":")
        src = REPO / (module.replace(".", "/") + ".py")
        assert src.is_file(), f"console script '{exe}': module file {src.relative_to(REPO)} missing"
        defs = {n.name for n in ast.parse(src.read_text()).body if isinstance(n, ast.FunctionDef)}
        assert func in defs, f"console script '{exe}': {module} has no function {func}()"
    assert started or lf.included(), f"{name} starts nothing and includes nothing"


def test_live_launch_runs_the_node_as_specified():
    lf = launch_file("live.launch.py")
    nodes = [c for c in calls(lf.tree, "Node") if lf.text(lf.arg(c, "executable")) == "sirenpose_node"]
    assert len(nodes) == 1, "live.launch.py must start exactly one sirenpose_node"
    node = nodes[0]
    assert lf.text(lf.arg(node, "name")) == "sirenpose", "node name must be 'sirenpose'"
    for kw in ("namespace", "parameters", "remappings", "arguments"):
        assert lf.arg(node, kw) is not None, f"sirenpose_node: missing {kw}="

    # Parameters: the params file first (so the dict overrides it), then declared names only.
    params = lf.arg(node, "parameters")
    assert isinstance(params, ast.List) and len(params.elts) == 2, "parameters=[params_file, {...}]"
    assert ast.unparse(params.elts[0]) in ("params_file", "LaunchConfiguration('params_file')"), \
        "first parameters entry must be the params_file launch argument"
    overrides = params.elts[1]
    assert isinstance(overrides, ast.Dict)
    declared = declared_params()
    for k, v in zip(overrides.keys, overrides.values):
        key = lf.text(k)
        assert key == "use_sim_time" or key in declared, f"node parameter '{key}' is not declared"
        if key == "use_sim_time":
            # A bare LaunchConfiguration would arrive as the string 'true' and be refused.
            assert isinstance(v, ast.Call) and call_name(v) == "ParameterValue" and \
                ast.unparse(lf.arg(v, "value_type")) == "bool", \
                "use_sim_time must be ParameterValue(..., value_type=bool)"

    # Remappings: every source is a topic name the node really uses.
    literals = node_string_literals()
    remaps = lf.arg(node, "remappings")
    sources = [lf.text(e.elts[0]) for e in remaps.elts]
    assert set(sources) == {"image", "image/compressed", "camera_info"}, sources
    for s in sources:
        assert s in literals, f"remapping source '{s}' is not a topic name in node.py"

    args = [lf.text(e) or ast.unparse(e) for e in lf.arg(node, "arguments").elts]
    assert args[:2] == ["--ros-args", "--log-level"], f"arguments={args}"
    assert lf.text(lf.arg(node, "output")) == "screen"


def test_rviz_is_optional_and_uses_the_package_config():
    lf = launch_file("live.launch.py")
    rviz = [c for c in calls(lf.tree, "Node") if lf.text(lf.arg(c, "package")) == "rviz2"]
    assert len(rviz) == 1, "live.launch.py must have one rviz2 Node"
    cond = lf.arg(rviz[0], "condition")
    assert cond is not None and call_name(cond) == "IfCondition" and \
        "rviz" in ast.unparse(cond), "rviz2 must start only with IfCondition(rviz)"
    refs = [r for r, node in lf.file_references() if any(n is node for n in ast.walk(rviz[0]))]
    assert refs == ["config/sirenpose.rviz"], f"rviz2 config reference: {refs}"
    # Remapped RViz topics must be the ones its config subscribes to.
    rviz_topics = {d["Topic"]["Value"] for d in rviz_displays() if "Topic" in d}
    for e in lf.arg(rviz[0], "remappings").elts:
        src = lf.text(e.elts[0])
        assert src in rviz_topics, f"rviz2 remapping source '{src}' is not a topic of {RVIZ_FILE.name}"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_launch_configurations_are_declared_and_used(name):
    lf = launch_file(name)
    declared, used = lf.declared(), lf.used()
    for arg, c in used.items():
        assert arg in declared, f"{lf.where(c)}: LaunchConfiguration('{arg}') is not declared"
    for arg, c in declared.items():
        assert arg in used, f"{lf.where(c)}: launch argument '{arg}' is declared but never used"


@pytest.mark.parametrize("name", LAUNCH_FILES)
def test_included_launch_gets_declared_arguments(name):
    lf = launch_file(name)
    for target, inc in lf.included():
        assert target in LAUNCH_FILES, f"{lf.where(inc)}: includes unknown launch file {target}"
        sub = launch_file(target)
        sub_declared = sub.declared()
        passed = lf.include_arguments(inc)
        for key in passed:
            assert key in sub_declared, f"{lf.where(inc)}: '{key}' is not an argument of {target}"
        for key, decl in sub_declared.items():
            if sub.arg(decl, "default_value") is None:
                assert key in passed, f"{lf.where(inc)}: required argument '{key}' of {target} not passed"


def test_live_launch_arguments_and_defaults():
    lf = launch_file("live.launch.py")
    declared = lf.declared()
    assert set(declared) == set(LIVE_ARGUMENTS), \
        f"live.launch.py arguments {sorted(declared)} != {sorted(LIVE_ARGUMENTS)}"
    for arg, expected in LIVE_ARGUMENTS.items():
        got = lf.default(arg)
        assert got is not None, f"live.launch.py: '{arg}' needs a default"
        if expected is not None:
            assert lf.text(got) == expected, f"live.launch.py: '{arg}' default {ast.unparse(got)}"
    params_default = [r for r, node in lf.file_references() if node is lf.default("params_file")]
    assert params_default == ["config/live.yaml"], f"params_file default names {params_default}"


def test_replay_launch_forwards_live_arguments():
    live, replay = launch_file("live.launch.py"), launch_file("replay.launch.py")
    r_declared = replay.declared()
    (target, inc), = replay.included()
    assert target == "live.launch.py"
    passed = replay.include_arguments(inc)
    assert replay.text(passed.get("use_sim_time")) == "true", "replay must pass use_sim_time:=true"
    assert "use_sim_time" not in r_declared, "a replay always runs on sim time: no argument"
    for arg in live.declared():
        if arg == "use_sim_time":
            continue
        assert arg in r_declared, f"replay.launch.py does not declare live argument '{arg}'"
        assert ast.unparse(replay.default(arg)) == ast.unparse(live.default(arg)), \
            f"'{arg}' default differs between replay.launch.py and live.launch.py"
        assert ast.unparse(passed.get(arg)) == f"LaunchConfiguration('{arg}')", \
            f"replay.launch.py does not forward '{arg}' to live.launch.py"
    assert replay.arg(r_declared["bag"], "default_value") is None, "'bag' must be required"
    assert replay.text(replay.default("rate")) == "1.0"
    assert replay.text(replay.default("loop")) == "1"


def test_multi_camera_launch_includes_live_once_per_namespaced_camera():
    lf = launch_file("multi_camera.launch.py")
    live = launch_file("live.launch.py")
    includes = lf.included()
    assert [t for t, _ in includes] == ["live.launch.py"] * 2, includes
    declared = lf.declared()
    namespaces = []
    for (_, inc), cam in zip(includes, ("front", "rear")):
        passed = lf.include_arguments(inc)
        # Every live argument except rviz comes from this file's own per-camera or shared argument.
        for arg in live.declared():
            assert arg in passed, f"multi_camera.launch.py: {cam} does not pass '{arg}'"
        for arg in ("namespace", "image_topic", "camera_info_topic", "params_file", "image_transport"):
            assert ast.unparse(passed[arg]) == f"LaunchConfiguration('{cam}_{arg}')", (cam, arg)
        assert lf.text(passed["rviz"]) == "false"
        namespaces.append(lf.text(lf.default(f"{cam}_namespace")))
        # Scoped: each include sits in its own GroupAction, so its configurations do not leak.
        groups = [g for g in calls(lf.tree, "GroupAction") if any(n is inc for n in ast.walk(g))]
        assert len(groups) == 1, f"{cam} include is not inside its own GroupAction"
    assert namespaces == ["cam_front", "cam_rear"], namespaces
    assert lf.text(lf.default("front_image_topic")) != lf.text(lf.default("rear_image_topic"))
    # Nothing global: no environment, no other actions than arguments and the two groups.
    for action in ("SetEnvironmentVariable", "SetRemap", "SetParameter", "Node", "ExecuteProcess"):
        assert not calls(lf.tree, action), f"multi_camera.launch.py uses {action}"
    assert set(declared) >= {"use_sim_time", "log_level"}


def test_replay_command_uses_existing_player_options():
    lf = launch_file("replay.launch.py")
    options = replay_options()
    (proc,) = calls(lf.tree, "ExecuteProcess")
    cmd = lf.arg(proc, "cmd").elts
    flags = [lf.text(e) for e in cmd if (lf.text(e) or "").startswith("-")]
    assert {"--rate", "--loop"} <= set(flags), f"player flags {flags}"
    for f in flags:
        assert f in options, f"replay.launch.py passes '{f}', which sirenpose_replay does not accept"
    assert ast.unparse(cmd[1]) == "LaunchConfiguration('bag')", "the bag must be the first argument"


def test_referenced_files_exist_and_are_installed():
    installed = installed_files()
    seen = set()
    for name in LAUNCH_FILES:
        lf = launch_file(name)
        for ref, node in lf.file_references():
            folder = ref.split("/")[0]
            assert folder in ("config", "launch", "models"), \
                f"{lf.where(node)}: '{ref}' is not under config/, launch/ or models/"
            assert (REPO / ref).is_file(), f"{lf.where(node)}: '{ref}' does not exist in the repo"
            dest = f"share/{PACKAGE}/{os.path.dirname(ref)}"
            assert os.path.normpath(ref) in installed.get(dest, set()), \
                f"{lf.where(node)}: '{ref}' is not installed to {dest} by setup.py data_files"
            seen.add(ref)
    assert {"config/live.yaml", "config/sirenpose.rviz", "launch/live.launch.py"} <= seen, seen
    for name in LAUNCH_FILES:
        assert f"launch/{name}" in installed.get(f"share/{PACKAGE}/launch", set()), \
            f"launch/{name} is not installed by setup.py"


# ------------------------------------------------------------------------- parameter file
def test_live_yaml_keys_are_declared_with_their_types():
    declared = declared_params()
    for key, value in load_live_yaml().items():
        if key == "use_sim_time":
            assert isinstance(value, bool), f"live.yaml: use_sim_time = {value!r} is not a bool"
            continue
        assert key in declared, f"live.yaml: '{key}' is not a declared parameter"
        spec = declared[key]
        # Exact type: ROS refuses an int for a double parameter (ParamSpec.check would coerce).
        assert type(value) is spec.type, \
            f"live.yaml: '{key}' = {value!r} is {type(value).__name__}, declared {spec.type.__name__}"
        try:
            spec.check(value)
        except ParamError as exc:
            pytest.fail(f"live.yaml: {exc}")


def test_live_yaml_states_the_current_defaults():
    declared = declared_params()
    for key, value in load_live_yaml().items():
        if key in declared:
            assert value == declared[key].default, \
                f"live.yaml: '{key}' = {value!r} but the code default is {declared[key].default!r}"


def test_live_yaml_covers_every_group():
    keys = set(load_live_yaml())
    for group in (["odom_frame", "base_frame", "publish_odom_tf"],
                  ["camera_x", "camera_yaw"], ["input_qos", "input_queue_depth"],
                  ["cloud_publish_period"]):
        for k in group:
            assert k in keys, f"live.yaml lacks '{k}'"
    node_names = {s.name for s in NODE_PARAMS}    # cloud_publish_period is the node's, not cloud's
    core_keys = keys - node_names
    for prefix in ("pipeline_", "frontend_", "window_", "field_", "cloud_"):
        if any(n.startswith(prefix) for n in set(declared_params()) - node_names):
            assert any(k.startswith(prefix) for k in core_keys), f"live.yaml has no {prefix}* parameter"
    assert "image_transport" not in keys, "image_transport is a launch argument that overrides the file"


def test_live_yaml_loads_through_rclpy_under_a_namespace():
    """The node's own path: rcl parses the file and declare_parameter types each value."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from rclpy.exceptions import ParameterException

    declared = declared_params()
    values = load_live_yaml()
    ctx = Context()
    rclpy.init(args=["--ros-args", "--params-file", str(LIVE_YAML)], context=ctx)
    try:
        node = rclpy.create_node("sirenpose", namespace="/cam1", context=ctx)
        try:
            for key in values:
                if key in declared:
                    try:
                        node.declare_parameter(key, declared[key].default)
                    except (ParameterException, TypeError, ValueError) as exc:
                        pytest.fail(f"live.yaml: rclpy refuses '{key}': {exc}")
            for key, value in values.items():
                got = node.get_parameter(key).value
                assert got == value and type(got) is type(value), \
                    f"live.yaml: '{key}' reaches the node as {got!r}, file says {value!r}"
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)


# ---------------------------------------------------------------------------- RViz config
def rviz_displays() -> list[dict]:
    doc = yaml.safe_load(RVIZ_FILE.read_text())
    assert isinstance(doc, dict), f"{RVIZ_FILE.name} is not a YAML mapping"
    vm = doc.get("Visualization Manager")
    assert isinstance(vm, dict) and isinstance(vm.get("Displays"), list), \
        f"{RVIZ_FILE.name}: no 'Visualization Manager' / 'Displays'"
    return vm["Displays"]


def test_auto_on_off_parameters_take_what_yaml_makes_of_on_and_true():
    """`-p pipeline_frontend_process:=on` reaches rclpy as a bool (YAML 1.1): the node accepts it
    (dynamic typing on those parameters) and check() maps it back to the word; a plain string
    choice still works and a wrong type is still refused."""
    rclpy = pytest.importorskip("rclpy")
    from rclpy.context import Context
    from sirenpose_ros.ros.node import _descriptor

    declared = declared_params()
    cases = {"pipeline_frontend_process": ("on", "on"), "pipeline_dense_process": ("off", "off"),
             "pipeline_graph_process": ("process", None), "pipeline_overlap_frontend": ("true", "true")}
    for name, (text, want) in cases.items():
        spec = declared[name]
        ctx = Context()
        rclpy.init(args=["--ros-args", "-p", f"{name}:={text}"], context=ctx)
        try:
            node = rclpy.create_node("sirenpose", context=ctx)
            try:
                value = node.declare_parameter(name, spec.default, _descriptor(spec)).value
            finally:
                node.destroy_node()
        finally:
            rclpy.shutdown(context=ctx)
        if want is None:
            with pytest.raises(ParamError, match="one of"):
                spec.check(value)
        else:
            assert isinstance(value, bool) and spec.check(value) == want
    assert declared["pipeline_overlap_frontend"].check(False) == "false"
    assert declared["pipeline_frontend"].bool_words() is None
    with pytest.raises(ParamError):
        declared["pipeline_frontend"].check(True)


def test_rviz_config_shows_the_node_outputs():
    doc = yaml.safe_load(RVIZ_FILE.read_text())
    assert isinstance(doc.get("Panels"), list), f"{RVIZ_FILE.name}: no Panels"
    fixed = doc["Visualization Manager"]["Global Options"]["Fixed Frame"]
    odom_default = next(s.default for s in NODE_PARAMS if s.name == "odom_frame")
    assert fixed == odom_default, f"{RVIZ_FILE.name}: Fixed Frame '{fixed}' != odom_frame default"

    allowed = published_topics() | {LIVE_ARGUMENTS["image_topic"]}
    by_topic = {}
    for d in rviz_displays():
        cls = d.get("Class", "")
        assert cls.startswith(("rviz_default_plugins/", "rviz_common/")), \
            f"{RVIZ_FILE.name}: display class '{cls}' is not an RViz2 plugin"
        if "Topic" in d:
            topic = d["Topic"]["Value"]
            assert topic in allowed, f"{RVIZ_FILE.name}: display '{d.get('Name')}' topic '{topic}' " \
                                     f"is neither published by the node nor the default image topic"
            by_topic[topic] = d
    expected = {"/odom": "Odometry", "/path": "Path", "/cloud": "PointCloud2",
                "/map_cloud": "PointCloud2", "/camera/image_raw": "Image"}
    for topic, cls in expected.items():
        assert topic in by_topic, f"{RVIZ_FILE.name}: no display on {topic}"
        assert by_topic[topic]["Class"] == f"rviz_default_plugins/{cls}", \
            f"{RVIZ_FILE.name}: {topic} shown by {by_topic[topic]['Class']}"
    assert by_topic["/cloud"]["Color Transformer"] == "RGB8", "/cloud must be coloured by its rgb field"
    assert any(d["Class"] == "rviz_default_plugins/TF" for d in rviz_displays()), "no TF display"


# ------------------------------------------------------------------------------ package.xml
def imported_ros_packages(path: Path) -> set[str]:
    """ROS packages a Python file imports, except imports guarded by try/except (optional)."""
    tree = ast.parse(path.read_text())
    optional = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try)
                for stmt in t.body for n in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
        else:
            continue
        for m in modules:
            parts = m.split(".")
            if (parts[0] in ROS_PYTHON_LIBS or parts[0].endswith(("_msgs", "_srvs", "_interfaces"))
                    or (len(parts) > 1 and parts[1] in ("msg", "srv", "action"))):
                found.add(parts[0])
    return found


def test_package_xml_declares_every_ros_dependency():
    root = ET.parse(REPO / "package.xml").getroot()
    assert root.tag == "package" and root.get("format") == "3", "package.xml must be format 3"
    assert root.findtext("name") == PACKAGE
    assert root.findtext("export/build_type") == "ament_python", "build_type must be ament_python"
    assert "ament_python" in [e.text for e in root.findall("buildtool_depend")]
    exec_deps = {e.text for tag in ("exec_depend", "depend") for e in root.findall(tag)}

    sources = sorted((REPO / PACKAGE).rglob("*.py")) + [REPO / "launch" / n for n in LAUNCH_FILES]
    needed: dict[str, str] = {}
    for src in sources:
        for pkg in imported_ros_packages(src):
            needed.setdefault(pkg, str(src.relative_to(REPO)))
    assert "rclpy" in needed and "launch_ros" in needed, f"import scan found only {sorted(needed)}"
    for pkg, src in sorted(needed.items()):
        assert pkg in exec_deps, f"package.xml: no <exec_depend>{pkg}</exec_depend> (imported by {src})"
