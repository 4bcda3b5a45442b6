"""Names: any text in, a valid, stable, collision-free name out (property tests)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack import naming
from devstack.errors import ConfigError

DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

HOSTILE = [
    "", "-", "--", "../../etc/passwd", "feature/login\nx: y", "a" * 300, "ÜBER-straße/日本語", "{{ .Values }}",
    "key: value", "- item", "*anchor", "&ref !!python/object", "'quoted'", '"dq"', "#comment", "%TAG", "@at",
    "`cmd`", "$(rm -rf /)", "a--b", "CAPS", "trailing-", "-leading", " space ", "\x00nul", "\ud800surrogate",
    "feature.dots", "login-fix",
]

branches = st.one_of(st.text(max_size=300), st.sampled_from(HOSTILE), st.from_regex(r"[a-z0-9-]{0,40}", fullmatch=True))


@given(branches)
def test_any_branch_gives_a_valid_feature_name(branch: str) -> None:
    name = naming.feature_name(branch)
    assert DNS_1123_LABEL.match(name), name
    assert len(name) <= naming.FEATURE_MAX
    assert "--" not in name  # "--" separates feature and service in preview hosts
    assert naming.is_feature_name(name)


@given(branches)
def test_feature_name_is_stable(branch: str) -> None:
    assert naming.feature_name(branch) == naming.feature_name(branch)


def _adversarial_partners(text: str) -> list[str]:
    """Texts built to collide with ``text``: its hashed form, kept-looking variants, length-limit cuts."""
    name = naming.feature_name(text)
    slug = naming._slug(text)
    return [
        name,  # the hashed (or kept) form of another input, used as a branch
        name.upper(), f"{name}/", f"{name}-", f"-{name}",
        slug, slug[: naming.FEATURE_MAX], slug[: naming.FEATURE_MAX - naming.HASH_LEN - 1],
        f"{slug[: naming.FEATURE_MAX - naming.HASH_LEN - 1]}-{naming._digest(text)}",
        f"{name}-{naming._digest(name)}", f"{slug}-000000", f"{slug[:23]}-abcdef",
        naming.pr_feature_name(name, pr_key="github:acme/payments#42", number=42),
    ]


adversarial_pairs = st.one_of(
    st.tuples(branches, branches),
    branches.flatmap(lambda t: st.tuples(st.just(t), st.sampled_from(_adversarial_partners(t)))),
)


@given(adversarial_pairs)
def test_different_branches_never_collide(pair: tuple[str, str]) -> None:
    """Defect pinned: a branch literally named like another branch's hashed form (``feature-login-2c1d5e``
    for ``feature/Login``) was kept as it is and took the same feature. Random pairs never found it;
    half the pairs here are built to collide (the hashed form, names that look hashed, cuts at the
    30-character limit)."""
    a, b = pair
    if a != b:
        assert naming.feature_name(a) != naming.feature_name(b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("feature/Login", naming.feature_name("feature/Login")),  # the hashed form of another input
        ("fix/abc123", "fix-abc123"),  # a valid name that looks like a hashed name
        ("x" * 31, f"{'x' * 23}-{naming._digest('x' * 31)}"),  # 31 characters vs. its cut, at the limit
        ("a" * 30, "a" * 31),  # the longest kept name vs. one character more
        ("Feature/" + "x" * 40, naming.feature_name("Feature/" + "x" * 40)),  # a 30-character hashed form
    ],
)
def test_built_collisions_get_different_names(a: str, b: str) -> None:
    """Defect pinned: hashed names and kept names could meet (see above), at every length."""
    assert naming.feature_name(a) != naming.feature_name(b)
    for name in (naming.feature_name(a), naming.feature_name(b)):
        assert naming.is_feature_name(name)


def test_a_name_that_looks_hashed_is_hashed_and_every_hashed_name_looks_hashed() -> None:
    assert naming.feature_name("release-202612") != "release-202612"
    assert naming.feature_name("release-202612").startswith("release-202612-")
    assert naming.feature_name("release-2026") == "release-2026"  # 4 digits: kept
    assert naming.feature_name("facade") == "facade"  # a hashed name always has a part before its hash
    assert naming.legacy_feature_name("release-202612") == "release-202612"  # what older devstack gave it
    for text in HOSTILE:
        name = naming.feature_name(text)
        assert naming.looks_hashed(name) or name == text


@given(st.tuples(st.from_regex(r"[a-z0-9]{1,4}(-[a-z0-9]{1,4}){0,6}", fullmatch=True),
                 st.from_regex(r"[a-z]{1,3}(-[a-z0-9]{1,4}){0,6}", fullmatch=True)),
       st.integers(min_value=1, max_value=6))
def test_app_names_are_injective_across_features(pair: tuple[str, str], cut: int) -> None:
    """Defect pinned: ``foo-payments`` + ``api`` and ``foo`` + ``payments-api`` both gave the Application
    ``foo-payments-api``; both were committed and Argo CD kept one. Every split of one dashed string
    into feature + service is tried here."""
    feature, service = pair
    joined = f"{feature}-{service}".split("-")
    names = set()
    splits = 0
    for i in range(1, len(joined)):
        f, s = "-".join(joined[:i]), "-".join(joined[i:])
        if naming.is_feature_name(f) and naming.service_name_problem(s) is None:
            names.add(naming.app_name(f, s))
            splits += 1
    assert len(names) == splits
    if naming.is_feature_name(feature) and naming.service_name_problem(service) is None:  # the generator can
        # make a feature longer than FEATURE_MAX (hypothesis found '0000-0-0000-0000-0000-0000-0000')
        assert naming.app_name(feature, service) != naming.legacy_app_name(feature, service)


def test_app_names_of_the_issue_and_at_the_length_limit() -> None:
    assert naming.app_name("foo-payments", "api") != naming.app_name("foo", "payments-api")
    assert naming.legacy_app_name("foo-payments", "api") == naming.legacy_app_name("foo", "payments-api")
    longest = naming.app_name("f" * 30, "s" * 30)
    assert len(longest) == 63 and naming.is_dns_label(longest)  # never shortened, so never hashed
    # never the namespace Application of any feature ("<feature>--namespace")
    assert naming.app_name("login-fix", "namespace") != "login-fix--namespace"
    assert naming.app_name("login", "fix-namespace") != "login-fix--namespace"
    with pytest.raises(naming.InvalidName):
        naming.app_name("ok", "s" * 31)


@given(st.from_regex(r"[a-z0-9]{1,30}", fullmatch=True), st.integers(min_value=0, max_value=10**15))
def test_pr_feature_names_are_valid_and_look_hashed(feature: str, number: int) -> None:
    name = naming.pr_feature_name(feature, pr_key=f"github:acme/payments#{number}", number=number)
    assert naming.is_feature_name(name) and naming.looks_hashed(name)
    assert naming.feature_name(name) != name  # no branch can take it as it is


@pytest.mark.parametrize("branch", HOSTILE)
def test_hostile_branches_become_derived_names(branch: str) -> None:
    name = naming.feature_name(branch)
    assert DNS_1123_LABEL.match(name)
    # everything derived from it is valid too
    assert DNS_1123_LABEL.match(naming.namespace(name))
    assert DNS_1123_LABEL.match(naming.app_name(name, "payments-api"))
    assert naming.entry_filename(name) == f"{name}.json"
    assert naming.feature_from_filename(naming.entry_filename(name)) == name
    host = naming.preview_host(template="{feature}--{service}.{domain}", feature=name, service="payments-api",
                               domain="preview.example.com")
    assert naming.hostname_problem(host) is None


def test_valid_names_are_kept_and_others_hashed() -> None:
    assert naming.feature_name("login-fix") == "login-fix"
    assert naming.feature_name("jira-123") == "jira-123"
    derived = naming.feature_name("feature/Login")
    assert derived.startswith("feature-login-") and len(derived) == len("feature-login-") + 6
    assert naming.feature_name("") .startswith("f-")
    assert len(naming.feature_name("x" * 300)) == naming.FEATURE_MAX


def test_legacy_app_name_is_what_older_devstack_wrote() -> None:
    assert naming.legacy_app_name("login-fix", "payments-api") == "login-fix-payments-api"
    assert naming.app_names("login-fix", "payments-api") == ("login-fix---payments-api", "login-fix-payments-api")


def test_derived_names_refuse_raw_user_text() -> None:
    with pytest.raises(naming.InvalidName):
        naming.namespace("Feature/Login")
    with pytest.raises(naming.InvalidName):
        naming.entry_filename("../x")
    with pytest.raises(naming.InvalidName):
        naming.preview_host(template="{feature}--{service}.{domain}", feature="ok", service="a_b", domain="x.com")


@pytest.mark.parametrize(
    ("name", "ok"),
    [("payments-api", True), ("a", True), ("Payments", False), ("a--b", False), ("-a", False), ("a-", False),
     ("9lives", False), ("x" * 31, False), ("", False)],
)
def test_service_names(name: str, ok: bool) -> None:
    assert (naming.service_name_problem(name) is None) is ok


@pytest.mark.parametrize("filename", ["README.md", "../x.json", "sub/x.json", "Bad.json", "a--b.json", ".json"])
def test_non_entry_files_are_not_features(filename: str) -> None:
    assert naming.feature_from_filename(filename) is None


@pytest.mark.parametrize(
    ("template", "ok"),
    [("{feature}--{service}.{domain}", True), ("{service}--{feature}.{domain}", True),
     ("{service}.{feature}.{domain}", True), ("x-{feature}-a--{service}.{domain}", True),
     ("{feature}-{service}.{domain}", False), ("{service}-{feature}.{domain}", False),
     ("{feature}{service}.{domain}", False), ("{feature}-x-{service}.{domain}", False),
     ("{feature}{domain}{service}", False)],
)
def test_host_templates_must_be_injective(template: str, ok: bool) -> None:
    """Defect pinned: a ``routing.host`` such as ``{feature}-{service}.{domain}`` passed the startup check
    and gave ``foo-payments`` + ``api`` and ``foo`` + ``payments-api`` one host."""
    assert (naming.host_template_problem(template) is None) is ok
    if ok:  # the pairs built to collide get different hosts
        hosts = {naming.preview_host(template=template, feature=f, service=s, domain="example.com")
                 for f, s in (("foo-payments", "api"), ("foo", "payments-api"), ("foo-x", "service"),
                              ("foo", "x-service"))}
        assert len(hosts) == 4


def test_an_ambiguous_host_template_is_refused_at_startup(make_settings: Callable[..., Any]) -> None:
    with pytest.raises(ConfigError, match=r"routing\.host: \{feature\} and \{service\} must be separated"):
        make_settings(routing={"host": "{feature}-{service}.{domain}"})
