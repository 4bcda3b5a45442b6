"""``devstack render``: the Applications Argo CD would create for an entry file, and their manifests.

Given ``previews/<feature>.json`` (or, as a dry run, a webhook payload and a configuration, planned
into entries the way the worker would), this expands ``argocd/applicationset*.yaml`` for every element
exactly as Argo CD's ApplicationSet controller does, then renders ``templates/feature-release`` for each
resulting Application with the real Helm engine, and prints everything as one YAML stream.

How the ApplicationSet is expanded (Argo CD's semantics, reproduced):

* **Parameters** (git files generator, ``goTemplate: true``): the keys of the element as they are
  (nested objects stay nested; JSON numbers become Go ``float64``), plus ``path``: ``path.path`` (the
  folder of the file), ``path.basename``, ``path.filename``, ``path.basenameNormalized``,
  ``path.filenameNormalized`` (Argo's ``SanitizeName``) and ``path.segments``. The element's own
  ``path`` key would be overwritten, which is why entries never have one. A generator ``values:``
  block would replace the element's ``values`` key, so argocd/ never sets one.
* **Selector**: a generator ``selector`` (matchLabels / matchExpressions) is evaluated on the flattened
  parameters (``a.b`` for nested keys, values printed with ``%v``), like Argo CD since 2.8.
* **Template**: every string of ``spec.template`` (values *and* map keys) is one Go template, rendered
  on its own with sprig and the ``goTemplateOptions`` (``missingkey=error``). Then the resources
  finalizer is added when the template has none.
* **templatePatch**: rendered as one text with the same parameters, parsed as YAML (JSON when it starts
  with ``{``) and merged into the Application (objects merge key by key, lists and scalars replace,
  ``null`` deletes), and ``spec.project`` is restored afterwards, as Argo CD does.

How the Go templating runs: Helm's template engine *is* Go ``text/template`` with sprig, so the
strings are rendered by Helm (``helm-python-sdk``, which embeds Helm's Go SDK; no ``helm`` binary). Each
string becomes a named template in a throwaway chart, ``{{ define "argo.N" }}<string>{{ end }}``, and
the chart's only output is ``[{{ include "argo.0" .Values.params | toJson }}, ...]``. Executing a named
template with ``.Values.params`` as its data makes both ``.`` and ``$`` the parameters, as in Argo CD
(where templates see ``.app``, not ``.Values.app``). Helm's engine is switched to strict mode, which is
``missingkey=error``. (Helm's habit of replacing ``<no value>`` in its output does not reach the
strings: they leave the engine JSON-encoded, so the result is Go's, as in Argo CD.) Known differences,
none of which argocd/ relies on: Helm lacks Argo's ``normalize`` and ``slugify`` functions (using them
fails loudly) and has a few of its own (``include``, ``tpl``, ``required``).

The chart is then rendered like ``helm template`` in Argo CD's repo-server: values from
``spec.source.helm`` (``values``, then ``valuesObject``, then ``parameters`` win), release name
``helm.releaseName`` (or the Application name), release namespace the destination namespace, checked
against ``values.schema.json``. The local chart at ``<repo root>/<spec.source.path>`` is rendered,
whatever ``repoURL`` and ``targetRevision`` say.
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import logging
import math
import posixpath
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from devstack import entries, naming
from devstack.errors import ConfigError, DevstackError, PermanentError
from devstack.events import PullRequestEvent

logger = logging.getLogger(__name__)

APPSET_FILES = ("applicationset.yaml", "applicationset-namespaces.yaml")
RENDER_EXTRA = (  # the distribution is devstack-previews: a PyPI project named devstack is unrelated
    "pip install -e '.[render]' (in a devstack checkout) or pip install 'devstack-previews[render]'"
)
_FINALIZER = "resources-finalizer.argocd.argoproj.io"
_DEFINE = "argo."
_INVALID_DNS_CHARS = re.compile(r"[^-a-z0-9.]")
_TEMPLATE_REF = re.compile(r'"argo\.(\d+)"')

# Helm's install order (pkg/release/util/kind_sorter.go), shortened to what a preview can contain.
_KIND_ORDER = (
    "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodDisruptionBudget", "ServiceAccount",
    "Secret", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "Deployment",
    "StatefulSet", "Job", "Middleware", "IngressRoute",
)


class RenderError(PermanentError):
    """An entry, an ApplicationSet or the chart cannot be rendered; the message says where and why."""


class HelmUnavailable(RenderError):
    """The Helm engine (helm-python-sdk) is not installed."""


class NotSelected(RenderError):
    """The ApplicationSet's generator selector does not select this element (no Application)."""


@dataclass(frozen=True, kw_only=True)
class RenderedApp:
    """One Application an entry element turns into, and the manifests it applies."""

    entry: str  # "previews/login-fix.json[0]"
    applicationset: str
    application: dict[str, Any]
    manifests: list[dict[str, Any]]


# --- the Helm engine -----------------------------------------------------------------------------


def _helm() -> ModuleType:
    try:
        import helm_python
    except (ImportError, OSError):
        raise HelmUnavailable(f"rendering needs the Helm engine (helm-python-sdk): {RENDER_EXTRA}") from None
    return helm_python


def go_template(texts: Sequence[str], params: Mapping[str, Any], *, missingkey_error: bool) -> list[str]:
    """Render each of ``texts`` as one Go template (sprig functions) with ``params`` as its data.

    ``missingkey_error``: a missing map key is an error (Argo's ``missingkey=error``), not ``<no value>``.
    """
    helm = _helm()
    from helm_python import _native

    defines = "".join(f'{{{{ define "{_DEFINE}{i}" }}}}{text}{{{{ end }}}}' for i, text in enumerate(texts))
    output = ",".join(f'{{{{ include "{_DEFINE}{i}" .Values.params | toJson }}}}' for i in range(len(texts)))
    with tempfile.TemporaryDirectory(prefix="devstack-argo-") as tmp:
        chart_dir = Path(tmp) / "argo"
        (chart_dir / "templates").mkdir(parents=True)
        (chart_dir / "Chart.yaml").write_text("apiVersion: v2\nname: argo\nversion: 0.0.0\n", encoding="utf-8")
        (chart_dir / "templates" / "out.json").write_text(f"{defines}[{output}]", encoding="utf-8")
        with helm.Chart.load(chart_dir) as chart:
            options = {"name": "argo", "namespace": "argo", "strict": missingkey_error}
            try:
                # helm_render's options take Helm's engine "strict" flag (missingkey=error), which
                # Chart.render does not expose; tests/test_appset.py checks that it still works.
                rendered = _native.call_string(
                    "helm_render", chart._raw(), json.dumps({"params": params}), json.dumps(options)
                )
            except helm.HelmError as exc:
                raise RenderError(_template_error(str(exc), texts)) from None
    files: dict[str, str] = json.loads(rendered)
    result: list[str] = json.loads(files["argo/templates/out.json"])
    return result


def _template_error(message: str, texts: Sequence[str]) -> str:
    match = _TEMPLATE_REF.search(message)
    detail = " ".join(line.strip() for line in message.splitlines() if line.strip())
    if match and int(match.group(1)) < len(texts):
        return f"template {texts[int(match.group(1))].strip()[:200]!r}: {detail}"
    return detail


# --- the ApplicationSet --------------------------------------------------------------------------


def load_applicationset(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RenderError(f"{path}: cannot be read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(loaded, dict) or loaded.get("kind") != "ApplicationSet":
        raise RenderError(f"{path}: not an ApplicationSet")
    return loaded


def sanitize_name(name: str) -> str:
    """Argo CD's ``utils.SanitizeName`` (``path.basenameNormalized``, the ``normalize`` function)."""
    return _INVALID_DNS_CHARS.sub("-", name.lower())[:253].strip("-.")


def path_params(filename: str) -> dict[str, Any]:
    """The ``path`` parameters the git files generator adds for the file ``filename`` (repo-relative)."""
    folder = posixpath.dirname(filename) or "."
    return {
        "path": folder,
        "basename": posixpath.basename(folder) or ".",
        "filename": posixpath.basename(filename),
        "basenameNormalized": sanitize_name(posixpath.basename(folder) or "."),
        "filenameNormalized": sanitize_name(posixpath.basename(filename)),
        "segments": folder.split("/"),
    }


def generator_params(element: Mapping[str, Any], *, filename: str, path_param_prefix: str = "") -> dict[str, Any]:
    """The parameters of one element of a git files generator in goTemplate mode."""
    params = copy.deepcopy(dict(element))
    if path_param_prefix:
        params[path_param_prefix] = {"path": path_params(filename)}
    else:
        params["path"] = path_params(filename)
    return params


def _go_value(value: Any) -> str:
    """``fmt.Sprintf("%v")`` of a JSON value as Go decodes it (every number is a float64)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "<nil>"
    if isinstance(value, int | float):
        return _go_float(float(value))
    return str(value)


def _go_float(number: float) -> str:
    """``strconv.FormatFloat(f, 'g', -1, 64)``: shortest digits, exponent when it is < -4 or >= 6."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    text = "".join(str(d) for d in digits)
    power = len(digits) - 1 + exponent
    prefix = "-" if sign else ""
    if power < -4 or power >= 6:
        mantissa = text[0] + (f".{text[1:]}" if len(text) > 1 else "")
        return f"{prefix}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"
    return prefix + format(Decimal(text).scaleb(power - len(text) + 1), "f")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested parameters as ``a.b`` / ``a.0`` keys with ``%v`` values, as selectors see them."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat.update(flatten_params({str(i): item for i, item in enumerate(value)}, f"{name}."))
        else:
            flat[name] = _go_value(value)
    return flat


def selector_matches(selector: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    """A Kubernetes label selector (matchLabels, matchExpressions) over the flattened parameters."""
    flat = flatten_params(params)
    for key, value in (selector.get("matchLabels") or {}).items():
        if flat.get(key) != str(value):
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = [str(v) for v in expression.get("values") or []]
        present = key in flat
        if operator == "In" and not (present and flat[key] in values):
            return False
        if operator == "NotIn" and present and flat[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
        if operator not in {"In", "NotIn", "Exists", "DoesNotExist"}:
            raise RenderError(f"selector operator {operator!r} is not supported")
    return True


def _strings(node: Any, found: list[str]) -> None:
    if isinstance(node, str):
        found.append(node)
    elif isinstance(node, Mapping):
        for key, value in node.items():
            _strings(value, found)
            _strings(key, found)
    elif isinstance(node, list):
        for item in node:
            _strings(item, found)


def _replace(node: Any, rendered: Iterator[str]) -> Any:
    if isinstance(node, str):
        return next(rendered)
    if isinstance(node, Mapping):
        result = {}
        for key, value in node.items():
            new_value = _replace(value, rendered)
            result[_replace(key, rendered)] = new_value
        return result
    if isinstance(node, list):
        return [_replace(item, rendered) for item in node]
    return node


def merge_patch(target: Any, patch: Any) -> Any:
    """Merge ``patch`` into ``target``: objects key by key, everything else replaces, null deletes."""
    if not isinstance(patch, Mapping) or not isinstance(target, Mapping):
        return copy.deepcopy(patch)
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def _generator(appset: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    spec = appset.get("spec") or {}
    name = (appset.get("metadata") or {}).get("name", "?")
    if spec.get("goTemplate") is not True:
        raise RenderError(f"ApplicationSet {name}: only goTemplate ApplicationSets are rendered")
    generators = spec.get("generators") or []
    if len(generators) != 1 or not (generators[0].get("git") or {}).get("files"):
        raise RenderError(f"ApplicationSet {name}: expected exactly one git files generator")
    git: dict[str, Any] = generators[0]["git"]
    if git.get("values") or git.get("template"):
        raise RenderError(f"ApplicationSet {name}: generator values/template are not rendered (nor used)")
    selector: dict[str, Any] | None = generators[0].get("selector")
    return git, selector


def file_patterns(appset: Mapping[str, Any]) -> list[str]:
    """The include patterns of the ApplicationSet's git files generator."""
    git, _ = _generator(appset)
    return [item["path"] for item in git["files"] if not item.get("exclude")]


def _matches_files(git: Mapping[str, Any], filename: str) -> bool:
    # git ls-files globbing, where "*" also matches "/" (hence the flat entries folder).
    included = any(fnmatch.fnmatchcase(filename, f["path"]) for f in git["files"] if not f.get("exclude"))
    excluded = any(fnmatch.fnmatchcase(filename, f["path"]) for f in git["files"] if f.get("exclude"))
    return included and not excluded


def expand(appset: Mapping[str, Any], element: Mapping[str, Any], *, filename: str) -> dict[str, Any]:
    """The Application ``appset`` generates for ``element`` of the entry file ``filename``.

    Raises :class:`NotSelected` when the generator's selector leaves the element out, and
    :class:`RenderError` for everything Argo CD would report as an ApplicationSet error.
    """
    git, selector = _generator(appset)
    spec = appset["spec"]
    name = appset["metadata"]["name"]
    if not _matches_files(git, filename):
        raise RenderError(f"ApplicationSet {name}: {filename} is not matched by its git files generator")
    params = generator_params(element, filename=filename, path_param_prefix=git.get("pathParamPrefix", ""))
    if selector is not None and not selector_matches(selector, params):
        raise NotSelected(f"ApplicationSet {name}: its selector does not select {filename}")
    template = {key: spec["template"][key] for key in ("metadata", "spec") if key in spec["template"]}
    texts: list[str] = []
    _strings(template, texts)
    patch = spec.get("templatePatch")
    if patch is not None:
        texts.append(patch)
    options = spec.get("goTemplateOptions") or []
    rendered = go_template(texts, params, missingkey_error="missingkey=error" in options)
    application = _replace(template, iter(rendered))
    metadata = application.get("metadata") or {}
    namespace = metadata.get("namespace") or appset["metadata"].get("namespace", "argocd")
    metadata = {"name": metadata.get("name"), "namespace": namespace, **metadata}
    application["metadata"] = metadata
    preserve = (spec.get("syncPolicy") or {}).get("preserveResourcesOnDeletion", False)
    if not metadata.get("finalizers") and not preserve:
        metadata["finalizers"] = [_FINALIZER]
    if patch is not None:
        application = _apply_patch(application, rendered[-1], appset_name=name)
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", **application}


def _apply_patch(application: dict[str, Any], text: str, *, appset_name: str) -> dict[str, Any]:
    try:
        loaded = json.loads(text) if text.strip().startswith("{") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise RenderError(f"ApplicationSet {appset_name}: templatePatch is not valid YAML: {exc}") from None
    if loaded is None:
        return application
    if not isinstance(loaded, dict):
        raise RenderError(f"ApplicationSet {appset_name}: templatePatch is not an object")
    project = application.get("spec", {}).get("project")
    patched: dict[str, Any] = merge_patch(application, loaded)
    patched.setdefault("spec", {})["project"] = project  # Argo CD never lets a patch change it
    return patched


def expand_applicationset(element: dict[str, Any], *, appset_path: Path, filename: str) -> dict[str, Any]:
    """The Application the ApplicationSet at ``appset_path`` generates for ``element``.

    ``filename`` is the entry file's path in the GitOps repo (``previews/login-fix.json``): it must
    match the generator's files and gives the ``path.*`` parameters.
    """
    return expand(load_applicationset(appset_path), element, filename=filename)


# --- the chart -----------------------------------------------------------------------------------


def helm_values(source: Mapping[str, Any], *, chart_dir: Path) -> dict[str, Any]:
    """The values Argo CD passes to ``helm template`` for ``spec.source`` (defaults come from the chart)."""
    helm = _helm()
    spec: Mapping[str, Any] = source.get("helm") or {}
    values: dict[str, Any] = {}
    for name in spec.get("valueFiles") or []:
        path = (chart_dir / name).resolve()
        if not path.is_relative_to(chart_dir.resolve()):
            raise RenderError(f"helm.valueFiles: {name} is outside the chart")
        if not path.is_file():
            if spec.get("ignoreMissingValueFiles"):
                continue
            raise RenderError(f"helm.valueFiles: {name} is not in the chart (and ignoreMissingValueFiles is off)")
        values = merge_patch(values, yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    if spec.get("values"):
        values = merge_patch(values, yaml.safe_load(spec["values"]) or {})
    if spec.get("valuesObject"):
        values = merge_patch(values, spec["valuesObject"])
    for parameter in spec.get("parameters") or []:
        expression = f"{parameter['name']}={parameter.get('value', '')}"
        parse = helm.parse_set_string_values if parameter.get("forceString") else helm.parse_set_string
        values = merge_patch(values, parse(expression))
    return values


def _kind_rank(manifest: Mapping[str, Any]) -> tuple[int, str, str]:
    kind = str(manifest.get("kind", ""))
    rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    return rank, kind, str((manifest.get("metadata") or {}).get("name", ""))


def render_application(app: dict[str, Any], *, chart_dir: Path) -> list[dict[str, Any]]:
    """The manifests ``app`` applies: its Helm source rendered from the local chart at ``chart_dir``."""
    helm = _helm()
    spec = app.get("spec") or {}
    source = spec.get("source")
    if not isinstance(source, Mapping):
        raise RenderError("only Applications with a single spec.source are rendered")
    values = helm_values(source, chart_dir=chart_dir)
    release = (source.get("helm") or {}).get("releaseName") or app["metadata"]["name"]
    namespace = (spec.get("destination") or {}).get("namespace") or "default"
    try:
        with helm.Chart.load(chart_dir) as chart:
            files = chart.render(values=values, name=release, namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise RenderError(f"Application {app['metadata']['name']}: {exc}") from None
    manifests: list[dict[str, Any]] = []
    for name in sorted(files):
        if name.endswith("NOTES.txt") or "/templates/tests/" in name:
            continue
        try:
            documents = list(yaml.safe_load_all(files[name]))
        except yaml.YAMLError as exc:
            raise RenderError(f"{name} did not render valid YAML: {exc}") from None
        manifests.extend(doc for doc in documents if doc)
    return sorted(manifests, key=_kind_rank)


# --- entry files ---------------------------------------------------------------------------------


def _appsets(repo_root: Path) -> list[tuple[Path, dict[str, Any]]]:
    found = [(repo_root / "argocd" / name) for name in APPSET_FILES]
    missing = [str(path) for path in found if not path.is_file()]
    if missing:
        raise RenderError(f"not a devstack checkout (missing {', '.join(missing)}): use --repo-root")
    return [(path, load_applicationset(path)) for path in found]


def _chart_dir(app: Mapping[str, Any], repo_root: Path) -> Path:
    path = str(((app.get("spec") or {}).get("source") or {}).get("path", ""))
    chart_dir = (repo_root / path).resolve()
    if not path or not chart_dir.is_relative_to(repo_root.resolve()) or not (chart_dir / "Chart.yaml").is_file():
        raise RenderError(f"Application {app['metadata']['name']}: chart path {path!r} is not a chart in {repo_root}")
    return chart_dir


def render_elements(
    feature: str, elements: list[dict[str, Any]], *, repo_root: Path, folder: str | None = None
) -> list[RenderedApp]:
    """Every Application (with manifests) the entry file of ``feature`` turns into.

    ``folder`` is the entries folder in the GitOps repo (default: the folder of the first
    ApplicationSet's files pattern, e.g. ``previews``).
    """
    entries.validate(feature, elements)
    appsets = _appsets(repo_root)
    if folder is None:
        folder = posixpath.dirname(file_patterns(appsets[0][1])[0])
    filename = posixpath.join(folder, naming.entry_filename(feature)) if folder else naming.entry_filename(feature)
    rendered: list[RenderedApp] = []
    for index, element in enumerate(elements):
        for _path, appset in appsets:
            try:
                app = expand(appset, element, filename=filename)
            except NotSelected:
                logger.debug("%s does not select %s[%d]", appset["metadata"]["name"], filename, index)
                continue
            rendered.append(
                RenderedApp(
                    entry=f"{filename}[{index}]",
                    applicationset=appset["metadata"]["name"],
                    application=app,
                    manifests=render_application(app, chart_dir=_chart_dir(app, repo_root)),
                )
            )
    return rendered


def render_entry_file(path: Path, *, repo_root: Path) -> list[RenderedApp]:
    """Render the entry file at ``path`` (``<folder>/<feature>.json``) against ``repo_root``'s argocd/."""
    feature = naming.feature_from_filename(path.name)
    if feature is None:
        raise RenderError(f"{path}: not an entry file name (<feature>.json)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RenderError(f"{path}: cannot be read: {exc.strerror}") from None
    return render_elements(feature, entries.decode(feature, data), repo_root=repo_root)


def format_render(rendered: Sequence[RenderedApp]) -> str:
    """One YAML stream: each Application, then the manifests it applies, with a comment naming both."""
    documents: list[str] = []
    files = {r.entry.rsplit("[", 1)[0] for r in rendered}
    owned = {r.entry.rsplit("[", 1)[0] for r in rendered if r.applicationset == "devstack-preview-namespaces"}
    noted: set[str] = set()
    for item in rendered:
        name = item.application["metadata"]["name"]
        file = item.entry.rsplit("[", 1)[0]
        header = f"# {item.entry} -> Application {name} (ApplicationSet {item.applicationset})\n"
        if file in files - owned and file not in noted:
            noted.add(file)
            header = (
                f"# {file}: no element has values.namespaceOwner \"true\", so no namespace Application\n"
                "# renders its Namespace, quota and network policy (the service Applications create a bare one).\n"
            ) + header
        documents.append(header + _dump(item.application))
        for manifest in item.manifests:
            kind = manifest.get("kind", "?")
            documents.append(f"# applied by {name}: {kind} {manifest.get('metadata', {}).get('name', '?')}\n"
                             + _dump(manifest))
    return "---\n".join(documents)


def _dump(document: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(document), sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


# --- the command ---------------------------------------------------------------------------------


def default_repo_root() -> Path | None:
    """The devstack checkout: the current directory or a parent of it, else what this devstack ships
    (its checkout, or the copy inside the installed wheel: devstack.bundle)."""
    from devstack.bundle import bundle_root

    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "argocd" / APPSET_FILES[0]).is_file():
            return candidate
    try:
        return bundle_root()
    except FileNotFoundError:
        return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("entry_file", nargs="?", type=Path, metavar="ENTRY_FILE",
                        help="an entry file, previews/<feature>.json")
    parser.add_argument("--event", type=Path, metavar="PAYLOAD.json",
                        help="dry run: plan this webhook payload instead of reading an entry file")
    parser.add_argument("--event-name", default="pull_request", help="the payload's event (default pull_request)")
    parser.add_argument("--config", type=Path, default=None,
                        help="devstack.yaml for --event (default: embedded defaults and DEVSTACK_* variables)")
    parser.add_argument("--repo-root", type=Path, default=None,
                        help="devstack checkout with argocd/ and templates/ (default: found from here)")


def run(args: argparse.Namespace) -> int:
    """``devstack render``: print the Applications and manifests; 1 on a render error, 2 on misuse."""
    if (args.entry_file is None) == (args.event is None):
        print("devstack render: give an ENTRY_FILE or --event PAYLOAD.json (not both)", file=sys.stderr)
        return 2
    repo_root = args.repo_root or default_repo_root()
    if repo_root is None:
        print("devstack render: no devstack checkout (argocd/, templates/) found: use --repo-root", file=sys.stderr)
        return 2
    try:
        _helm()
        if args.entry_file is not None:
            rendered = render_entry_file(args.entry_file, repo_root=repo_root)
        else:
            rendered = _render_event(args, repo_root=repo_root)
    except (HelmUnavailable, ConfigError) as exc:
        print(f"devstack render: {exc}", file=sys.stderr)
        return 2
    except DevstackError as exc:
        print(f"devstack render: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(format_render(rendered))
    return 0


def _render_event(args: argparse.Namespace, *, repo_root: Path) -> list[RenderedApp]:
    from devstack.catalog import load_settings
    from devstack.planner import plan
    from devstack.providers.github import Ignored, parse_delivery

    settings = load_settings(args.config)
    try:
        payload = json.loads(args.event.read_bytes())
    except OSError as exc:
        raise RenderError(f"{args.event}: cannot be read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RenderError(f"{args.event}: not JSON: {exc}") from None
    now = datetime.now(UTC)
    event = parse_delivery(event=args.event_name, delivery_id="devstack-render", payload=payload, received_at=now)
    if isinstance(event, Ignored):
        raise RenderError(f"{args.event}: ignored: {event.reason}")
    if not isinstance(event, PullRequestEvent):
        raise RenderError(f"{args.event}: a comment deploys nothing by itself; render a pull_request payload")
    result = plan(events=[event], entries={}, catalog=settings, now=now)
    if not result.entries:
        reason = result.decisions[-1].reason if result.decisions else "nothing to deploy"
        raise RenderError(f"{args.event}: no preview: {reason}")
    rendered: list[RenderedApp] = []
    for feature, elements in sorted(result.entries.items()):
        rendered.extend(render_elements(feature, elements, repo_root=repo_root, folder=settings.gitops.path))
    return rendered
