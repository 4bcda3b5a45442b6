"""Names: any text in, a valid, stable, collision-free name out (property tests)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from devstack import naming

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


@given(branches, branches)
def test_different_branches_do_not_collide(a: str, b: str) -> None:
    if a != b:
        assert naming.feature_name(a) != naming.feature_name(b)


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


def test_app_name_is_shortened_with_a_hash_past_63() -> None:
    feature = "a" * 30
    name = naming.app_name(feature, "s" * 30 + "x")
    assert len(name) <= 63 and DNS_1123_LABEL.match(name)
    assert name != naming.app_name(feature, "s" * 30 + "y")


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
