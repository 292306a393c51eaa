"""What the source and the fakes use of TensorRT, checked against a real module's surface.

``check_source(src_dir, surface)`` reads every ``.py`` under ``src_dir`` (AST, nothing imported)
and finds what it does with TensorRT: attribute chains on the module (``trt.ILogger.Severity.ERROR``),
``getattr``/``hasattr`` probes, constructor and method calls (with their positional count and
keywords), property reads and writes, and subclasses of TensorRT classes. Receivers are typed by a
small flow-insensitive inference: ``trt.Builder(...)`` is a ``Builder``, and a method's return type
comes from the real pybind signature (``create_builder_config() -> IBuilderConfig``); names,
``self.x`` attributes, function parameters (bound at the module's own call sites), and function
returns (tuples element-wise) carry the types along. Each use is then checked against the surface
(``real_tensorrt.describe``): the attribute exists, the enum member is a member, the call matches
one real overload, the property is settable, an override exists in the base and ``__init__`` calls
the base ``__init__``.

``check_fake(fake_module, surface)`` compares the fake module with the real one: every public name,
member, enum value and method signature of the fake must exist in the real module, and return
annotations must name what the real method returns.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCALARS = {"bool", "int", "float", "str", "None", "bytes", "object", "buffer", "Buffer"}


@dataclass
class Report:
    findings: list[str] = field(default_factory=list)  # contract violations
    uses: list[str] = field(default_factory=list)  # what was checked, "file:line kind what"
    optional_missing: list[str] = field(default_factory=list)  # getattr/hasattr probes this version lacks

    def used(self, kind: str) -> set[str]:
        return {u.split(" ", 2)[2] for u in self.uses if u.split(" ", 2)[1] == kind}


# -- the surface ---------------------------------------------------------------------------------------
def _entry(surface: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    parts = dotted.split(".")
    node = surface["module"].get(parts[0])
    for p in parts[1:]:
        if node is None:
            return None
        node = node.get("members", {}).get(p)
    return node


def returned(surface: dict[str, Any], sig: dict[str, Any]) -> str | None:
    """A signature's return type as a module name (pybind prints some as C++ types: ``IParserError``)."""
    ret = sig.get("returns")
    if ret and ret not in surface["module"] and ret.startswith("I") and ret[1:] in surface["module"]:
        return ret[1:]
    return ret


def _match(sig: dict[str, Any], npos: int, keywords: list[str], bound: bool) -> bool:
    params = sig["params"][1:] if bound and sig["params"] and sig["params"][0]["name"] == "self" else sig["params"]
    if any(p["kind"] in ("var", "varkw") for p in params):
        return True
    plain = [p for p in params if p["kind"] == "normal"]
    if npos > len(plain):
        return False
    filled = {p["name"] for p in plain[:npos]}
    names = {p["name"] for p in plain}
    for k in keywords:
        if k not in names or k in filled:
            return False
        filled.add(k)
    return all(p["default"] or p["name"] in filled for p in plain)


def _sig_text(sig: dict[str, Any]) -> str:
    return "(" + ", ".join(p["name"] + ("=..." if p["default"] else "") for p in sig["params"]) + ")"


# -- the source ----------------------------------------------------------------------------------------
class _Scan:
    """Flow-insensitive types over one source tree. A type is ``"mod"`` (the tensorrt module),
    ``"cls:X"`` (a class or enum object, X dotted), ``"meth:X.m"``, ``"fn:f"`` (module function),
    ``"X"`` (an instance of X), or a tuple of those."""

    def __init__(self, files: dict[str, ast.Module], surface: dict[str, Any]) -> None:
        self.files, self.surface = files, surface
        self.env: dict[tuple, Any] = {}
        self.aliases = {"trt"}
        self.funcs: dict[tuple[str, str], ast.FunctionDef] = {}  # (file, name or Class.name) -> def
        self.scope_of: dict[ast.AST, tuple[str, str]] = {}  # node -> (file, enclosing function qualname)
        self.class_of: dict[ast.AST, str] = {}
        for fname, tree in files.items():
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    self.aliases |= {a.asname or a.name for a in node.names if a.name == "tensorrt"}
            self._index(fname, tree, "", None)

    def _index(self, fname: str, node: ast.AST, scope: str, cls: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                q = f"{scope}.{child.name}" if scope else child.name
                self.funcs[(fname, q)] = child
                if cls and scope == cls:
                    self.funcs.setdefault((fname, f"{cls}.{child.name}"), child)
                self.scope_of[child] = (fname, scope)
                self._index(fname, child, q, cls)
            elif isinstance(child, ast.ClassDef):
                q = f"{scope}.{child.name}" if scope else child.name
                self.scope_of[child] = (fname, scope)
                self._index(fname, child, q, q)
            else:
                self.scope_of[child] = (fname, scope)
                self.class_of[child] = cls or ""
                self._index(fname, child, scope, cls)

    # types
    def lookup(self, fname: str, scope: str, name: str) -> Any:
        if name in self.aliases:
            return "mod"
        s = scope
        while True:
            if (fname, s, name) in self.env:
                return self.env[(fname, s, name)]
            if not s:
                return None
            s = s.rpartition(".")[0]

    def member_type(self, t: Any, attr: str) -> Any:
        if t == "mod":
            e = self.surface["module"].get(attr)
            if e is None:
                return None
            if e["kind"] in ("class", "enum"):
                return f"cls:{attr}"
            return f"fn:{attr}" if e["kind"] == "function" else None
        if isinstance(t, str) and t.startswith("cls:"):
            e = _entry(self.surface, f"{t[4:]}.{attr}")
            if e is None:
                return None
            if e["kind"] in ("class", "enum"):
                return f"cls:{t[4:]}.{attr}"
            if e["kind"] == "enum_value":
                return t[4:]
            if e["kind"] == "method":
                return f"unbound:{t[4:]}.{attr}"
            return None
        if isinstance(t, str) and t in self.surface["module"] or (isinstance(t, str) and _entry(self.surface, t)):
            e = _entry(self.surface, f"{t}.{attr}")
            if e is not None and e["kind"] == "method":
                return f"meth:{t}.{attr}"
        return None

    def type_of(self, fname: str, scope: str, node: ast.AST) -> Any:
        if isinstance(node, ast.Name):
            return self.lookup(fname, scope, node.id)
        if isinstance(node, ast.Attribute):
            base = self.type_of(fname, scope, node.value)
            t = self.member_type(base, node.attr) if base is not None else None
            if t is None and not (isinstance(base, str) and (base == "mod" or base.startswith("cls:"))):
                t = self.env.get(("attr", node.attr))
            return t
        if isinstance(node, ast.IfExp):
            return self.type_of(fname, scope, node.body) or self.type_of(fname, scope, node.orelse)
        if isinstance(node, ast.Tuple):
            return tuple(self.type_of(fname, scope, e) for e in node.elts)
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "getattr" and len(node.args) >= 2 and \
                    isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                base = self.type_of(fname, scope, node.args[0])
                return self.member_type(base, node.args[1].value) if base is not None else None
            ft = self.type_of(fname, scope, f)
            if isinstance(ft, str) and ft.startswith("cls:"):
                return ft[4:]
            if isinstance(ft, str) and ft.startswith("meth:"):
                e = _entry(self.surface, ft[5:])
                ret = returned(self.surface, e["signatures"][0]) if (e or {}).get("signatures") else None
                return ret if ret and ret not in SCALARS and ret in self.surface["module"] else None
            target = self._local_function(fname, scope, f)
            if target is not None:
                return self.env.get(("ret",) + target)
        return None

    def _local_function(self, fname: str, scope: str, f: ast.AST) -> tuple[str, str] | None:
        if isinstance(f, ast.Name):
            s = scope
            while True:
                q = f"{s}.{f.id}" if s else f.id
                if (fname, q) in self.funcs:
                    return (fname, q)
                if not s:
                    return None
                s = s.rpartition(".")[0]
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls"):
            cls = scope.split(".")[0]
            if (fname, f"{cls}.{f.attr}") in self.funcs:
                return (fname, f"{cls}.{f.attr}")
        return None

    def _assign(self, key: tuple, t: Any) -> bool:
        old = self.env.get(key)
        if isinstance(t, tuple) and isinstance(old, tuple) and len(t) == len(old):
            t = tuple(o if o is not None else n for o, n in zip(old, t))
            if t == old:
                return False
            self.env[key] = t
            return True
        if t is None or old is not None or (isinstance(t, tuple) and not any(t)):
            return False
        self.env[key] = t
        return True

    def infer(self) -> None:
        for _ in range(6):
            changed = False
            for fname, tree in self.files.items():
                for node in ast.walk(tree):
                    _, scope = self.scope_of.get(node, (fname, ""))
                    if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
                        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                        t = self.type_of(fname, scope, node.value)
                        for tgt in targets:
                            changed |= self._bind(fname, scope, tgt, t)
                    elif isinstance(node, ast.Return) and node.value is not None:
                        t = self.type_of(fname, scope, node.value)
                        changed |= self._assign(("ret", fname, scope), t)
                    elif isinstance(node, ast.Call):
                        target = self._local_function(fname, scope, node.func)
                        if target is None:
                            continue
                        fdef = self.funcs[target]
                        params = [a.arg for a in fdef.args.args]
                        if params and params[0] in ("self", "cls") and isinstance(node.func, ast.Attribute):
                            params = params[1:]
                        for p, a in zip(params, node.args):
                            changed |= self._assign((target[0], target[1], p), self.type_of(fname, scope, a))
                        for kw in node.keywords:
                            if kw.arg:
                                changed |= self._assign((target[0], target[1], kw.arg),
                                                        self.type_of(fname, scope, kw.value))
            if not changed:
                return

    def _bind(self, fname: str, scope: str, tgt: ast.AST, t: Any) -> bool:
        if isinstance(tgt, ast.Name):
            return self._assign((fname, scope, tgt.id), t)
        if isinstance(tgt, ast.Attribute):
            return self._assign(("attr", tgt.attr), t)
        if isinstance(tgt, ast.Tuple) and isinstance(t, tuple):
            return any([self._bind(fname, scope, e, et) for e, et in zip(tgt.elts, t)])
        return False


def check_source(src_dir: Path, surface: dict[str, Any], *, root: Path | None = None) -> Report:
    files = {}
    for path in sorted(Path(src_dir).rglob("*.py")):
        text = path.read_text()
        if re.search(r"\btrt\b|import tensorrt", text):  # where the module object is used by name
            files[str(path.relative_to(root or src_dir))] = ast.parse(text, str(path))
    scan = _Scan(files, surface)
    scan.infer()
    rep = Report()
    version = surface["version"]

    def where(fname: str, node: ast.AST) -> str:
        return f"{fname}:{node.lineno}"

    for fname, tree in files.items():
        stored = {id(n.targets[0]) for n in ast.walk(tree) if isinstance(n, ast.Assign) and len(n.targets) == 1}
        for node in ast.walk(tree):
            _, scope = scan.scope_of.get(node, (fname, ""))
            if isinstance(node, ast.ClassDef):
                _check_subclass(scan, fname, scope, node, rep, version)
            elif isinstance(node, ast.Attribute):
                base = scan.type_of(fname, scope, node.value)
                if base is None:
                    continue
                if base == "mod" or (isinstance(base, str) and base.startswith("cls:")):
                    owner = "tensorrt" if base == "mod" else base[4:]
                    entry = scan.surface["module"].get(node.attr) if base == "mod" else \
                        _entry(scan.surface, f"{base[4:]}.{node.attr}")
                    rep.uses.append(f"{where(fname, node)} attr {owner}.{node.attr}".replace("tensorrt.", ""))
                    if entry is None:
                        rep.findings.append(f"{where(fname, node)}: {owner}.{node.attr} does not exist in "
                                            f"TensorRT {version}")
                elif isinstance(base, str) and not base.startswith(("meth:", "fn:", "unbound:")) and \
                        _entry(scan.surface, base) is not None:
                    entry = _entry(scan.surface, f"{base}.{node.attr}")
                    rep.uses.append(f"{where(fname, node)} member {base}.{node.attr}")
                    if entry is None:
                        rep.findings.append(f"{where(fname, node)}: {base} has no attribute '{node.attr}' in "
                                            f"TensorRT {version}")
                    elif id(node) in stored and isinstance(node.ctx, ast.Store):
                        if entry["kind"] != "property" or not entry.get("settable"):
                            rep.findings.append(f"{where(fname, node)}: {base}.{node.attr} cannot be set in "
                                                f"TensorRT {version}")
            elif isinstance(node, ast.Call):
                _check_call(scan, fname, scope, node, rep, version)
    return rep


def _check_call(scan: _Scan, fname: str, scope: str, node: ast.Call, rep: Report, version: str) -> None:
    at = f"{fname}:{node.lineno}"
    f = node.func
    if isinstance(f, ast.Name) and f.id in ("getattr", "hasattr") and len(node.args) >= 2 and \
            isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
        base = scan.type_of(fname, scope, node.args[0])
        if base == "mod" or (isinstance(base, str) and base.startswith("cls:")):
            owner = "tensorrt" if base == "mod" else base[4:]
            name = node.args[1].value
            entry = scan.surface["module"].get(name) if base == "mod" else _entry(scan.surface, f"{owner}.{name}")
            rep.uses.append(f"{at} probe {owner}.{name}".replace("tensorrt.", ""))
            if entry is None:
                strict = f.id == "getattr" and len(node.args) == 2
                (rep.findings if strict else rep.optional_missing).append(
                    f"{at}: {owner}.{name} does not exist in TensorRT {version}")
        return
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return
    ft = scan.type_of(fname, scope, f)
    if not isinstance(ft, str):
        return
    npos, kws = len(node.args), [k.arg for k in node.keywords]
    if ft.startswith("cls:"):
        entry = _entry(scan.surface, ft[4:])
        sigs, bound, what = (entry or {}).get("init", []), True, f"{ft[4:]}(...)"
    elif ft.startswith("meth:"):
        entry = _entry(scan.surface, ft[5:])
        sigs, bound, what = (entry or {}).get("signatures", []), not (entry or {}).get("static"), f"{ft[5:]}(...)"
    elif ft.startswith("unbound:"):
        entry = _entry(scan.surface, ft[8:])
        sigs, bound, what = (entry or {}).get("signatures", []), False, f"{ft[8:]}(...)"
    elif ft.startswith("fn:"):
        entry = scan.surface["module"].get(ft[3:])
        sigs, bound, what = (entry or {}).get("signatures", []), False, f"{ft[3:]}(...)"
    else:
        return
    rep.uses.append(f"{at} call {what[:-5]}")
    if not sigs:
        return
    if not any(_match(s, npos, kws, bound) for s in sigs):
        got = ", ".join(["arg"] * npos + [f"{k}=" for k in kws])
        real = " | ".join(_sig_text(s) for s in sigs)
        rep.findings.append(f"{at}: {what[:-5]}({got}) matches no signature of TensorRT {version}: {real}")


def _check_subclass(scan: _Scan, fname: str, scope: str, node: ast.ClassDef, rep: Report, version: str) -> None:
    for b in node.bases:
        bt = scan.type_of(fname, scope, b)
        if not (isinstance(bt, str) and bt.startswith("cls:")):
            continue
        base = bt[4:]
        entry = _entry(scan.surface, base) or {}
        rep.uses.append(f"{fname}:{node.lineno} subclass {base}")
        init = next((s for s in node.body if isinstance(s, ast.FunctionDef) and s.name == "__init__"), None)
        if init is not None:
            calls_base = any(isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "__init__"
                             for c in ast.walk(init))
            if not calls_base:
                rep.findings.append(f"{fname}:{init.lineno}: {node.name}.__init__ does not call {base}.__init__ "
                                    "(pybind11 trampolines need it)")
        for s in node.body:
            if isinstance(s, ast.FunctionDef) and not s.name.startswith("_"):
                real = entry.get("members", {}).get(s.name)
                if real is None or real["kind"] != "method":
                    rep.findings.append(f"{fname}:{s.lineno}: {node.name}.{s.name} overrides nothing in {base} "
                                        f"(TensorRT {version})")
                    continue
                rep.uses.append(f"{fname}:{s.lineno} override {base}.{s.name}")
                npos = len(s.args.args) - 1
                if real["signatures"] and not any(_match(sig, npos, [], True) for sig in real["signatures"]):
                    rep.findings.append(f"{fname}:{s.lineno}: {node.name}.{s.name} takes {npos} argument(s); "
                                        f"TensorRT {version} calls it as {_sig_text(real['signatures'][0])}")


# -- the fakes -----------------------------------------------------------------------------------------
def _annotation_names(ann: Any) -> set[str]:
    text = ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))
    return {p.strip().strip("'\"").split(".")[-1] for p in str(text).replace("Optional[", "").rstrip("]").split("|")}


def check_fake(fake: Any, surface: dict[str, Any], *, fake_only: frozenset[str] = frozenset()) -> list[str]:
    """Differences between the fake module and the real one, where the fake offers something."""
    out: list[str] = []
    version = surface["version"]
    for name in sorted(vars(fake)):
        if name.startswith("_") or name in fake_only:
            continue
        value = getattr(fake, name)
        real = surface["module"].get(name)
        if real is None:
            out.append(f"fake tensorrt.{name} does not exist in TensorRT {version}")
            continue
        _compare(f"tensorrt.{name}", value, real, surface, out, version)
    return out


def _compare(path: str, value: Any, real: dict[str, Any], surface: dict[str, Any], out: list[str],
             version: str) -> None:
    if real["kind"] == "enum":
        members = getattr(value, "__members__", None)
        if members is None:
            out.append(f"fake {path} is not an enum type (TensorRT's is); got {type(value).__name__}")
            return
        for m, v in members.items():
            if m not in real["values"]:
                out.append(f"fake {path}.{m} is not a member in TensorRT {version}")
            elif int(v) != real["values"][m]:
                out.append(f"fake {path}.{m} = {int(v)}; TensorRT {version} has {real['values'][m]}")
        return
    if real["kind"] == "function":
        if not callable(value):
            out.append(f"fake {path} is not callable")
        return
    if real["kind"] != "class":
        return
    if not isinstance(value, type):
        out.append(f"fake {path} is not a class (TensorRT's is)")
        return
    for klass in value.__mro__:
        if klass is object or klass.__module__ not in (value.__module__,):
            continue
        for name, raw in vars(klass).items():
            if name.startswith("_") and name != "__init__":
                continue
            if name == "__init__":
                _compare_init(path, raw, real, out, version)
                continue
            entry = real["members"].get(name)
            if entry is None:
                out.append(f"fake {path}.{name} does not exist in TensorRT {version}")
                continue
            if isinstance(raw, type):
                _compare(f"{path}.{name}", raw, entry, surface, out, version)
            elif isinstance(raw, property):
                if entry["kind"] != "property":
                    out.append(f"fake {path}.{name} is a property; TensorRT {version} has a {entry['kind']}")
            elif callable(raw):
                if entry["kind"] != "method":
                    out.append(f"fake {path}.{name} is a method; TensorRT {version} has a {entry['kind']}")
                else:
                    _compare_method(f"{path}.{name}", raw, entry, surface, out, version)
        break  # the fake's own class only (its bases are real or checked on their own)


def _fake_params(fn: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(fn).parameters.values())


def _compare_init(path: str, fn: Any, real: dict[str, Any], out: list[str], version: str) -> None:
    sigs = real.get("init") or []
    if not sigs:
        return
    params = _fake_params(fn)[1:]
    if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        return
    required = sum(1 for p in params if p.default is p.empty)
    if not any(_match(s, required, [], True) for s in sigs):
        out.append(f"fake {path}({', '.join(p.name for p in params)}) matches no constructor of TensorRT {version}: "
                   + " | ".join(_sig_text(s) for s in sigs))


def _compare_method(path: str, fn: Any, entry: dict[str, Any], surface: dict[str, Any], out: list[str],
                    version: str) -> None:
    params = _fake_params(fn)
    if params and params[0].name == "self":
        params = params[1:]
    sigs = entry.get("signatures") or []
    if sigs and any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params) and \
            not any(q["kind"] != "normal" for s in sigs for q in s["params"]):
        out.append(f"fake {path} accepts any arguments; TensorRT {version} takes only "
                   + " | ".join(_sig_text(s) for s in sigs))
    elif sigs:
        def same(sig: dict[str, Any]) -> bool:
            real = [p for p in sig["params"] if p["name"] != "self"]
            return [p.name for p in params] == [p["name"] for p in real] and \
                all((p.default is not p.empty) == r["default"] for p, r in zip(params, real))

        if not any(same(s) for s in sigs):
            mine = "(" + ", ".join(p.name + ("=..." if p.default is not p.empty else "") for p in params) + ")"
            out.append(f"fake {path}{mine} matches no overload of TensorRT {version}: "
                       + " | ".join(_sig_text(s) for s in sigs))
        elif any(p.kind == p.KEYWORD_ONLY for p in params):
            out.append(f"fake {path} has keyword-only parameters; pybind takes them positionally too")
    # bool and TensorRT's own types must be returned as such (Dims: the code only iterates it; tuples do)
    returns = {r for r in (returned(surface, s) for s in sigs)
               if r == "bool" or (r in surface["module"] and r != "Dims")}
    ann = inspect.signature(fn).return_annotation
    if returns and ann is inspect.Signature.empty:
        out.append(f"fake {path} has no return annotation; TensorRT {version} returns {' or '.join(sorted(returns))}")
    elif returns:
        names = _annotation_names(ann) - {"None"}
        want = {r for r in returns}
        if not names & want:
            out.append(f"fake {path} returns {ann}; TensorRT {version} returns {' or '.join(sorted(want))}")
