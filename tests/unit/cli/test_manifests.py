"""manifests.py: finding pod specs, policies and namespaces in Kubernetes YAML."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gomemlimit_operator.cli.manifests import (
    POD_SPEC_PATHS,
    Document,
    ManifestError,
    dump_documents,
    load_manifests,
)

TESTDATA = Path(__file__).parents[1] / "testdata"
TEMPLATE = "spec.template.spec"


def test_finds_every_pod_spec_with_its_location() -> None:
    found = load_manifests([str(TESTDATA / "manifests")])
    summary = [
        (Path(p.file).name, p.document, p.item, p.kind, p.namespace, p.name, p.prefix)
        for p in found.pods
    ]
    assert summary == [
        ("app.yaml", 1, None, "Deployment", "team", "api", "spec.template.spec"),
        ("cronjob.yaml", 0, None, "CronJob", "jobs", "nightly", f"spec.jobTemplate.{TEMPLATE}"),
        ("list.yaml", 0, 0, "Pod", "default", "web", "spec"),
        ("list.yaml", 0, 1, "StatefulSet", "default", "db", "spec.template.spec"),
        ("workloads.yml", 0, None, "DaemonSet", "default", "agent", "spec.template.spec"),
        ("workloads.yml", 1, None, "ReplicaSet", "default", "legacy", "spec.template.spec"),
        ("workloads.yml", 2, None, "ReplicationController", "default", "old", "spec.template.spec"),
        ("workloads.yml", 3, None, "Job", "default", "once", "spec.template.spec"),
        ("pod.json", 0, None, "Pod", "default", "json-pod", "spec"),
        ("tiny.yaml", 0, None, "Pod", "default", "tiny", "spec"),
    ]  # fmt: skip
    assert {row[3] for row in summary} == set(POD_SPEC_PATHS)  # every workload kind
    assert [policy.ref for policy in found.policies] == [
        "ClusterGoMemPolicy/go-default",
        "ClusterGoMemPolicy/prod-strict",
        "GoMemPolicy/jobs/batch",
    ]
    assert found.namespaces == {"team": {"env": "prod"}}
    assert len(found.documents) == 14


def test_pod_metadata_comes_from_the_template() -> None:
    found = load_manifests([str(TESTDATA / "manifests" / "nested" / "workloads.yml")])
    legacy = found.pods[1]
    assert legacy.labels == {"app": "legacy", "runtime": "go"}
    assert legacy.metadata["annotations"] == {"gomemlimit.io/skip": "true"}
    assert legacy.ref == "ReplicaSet/default/legacy"
    assert legacy.spec["containers"][0]["name"] == "app"


def test_the_spec_is_the_document_itself_not_a_copy() -> None:
    found = load_manifests([str(TESTDATA / "manifests" / "cronjob.yaml")])
    [pod] = found.pods
    pod.spec["containers"][0]["image"] = "changed"
    body = found.documents[0].body
    assert body["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["image"] == (
        "changed"
    )


def test_empty_documents_are_skipped_but_counted(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("---\n---\nkind: Pod\nmetadata: {name: p}\nspec: {containers: []}\n---\n")
    found = load_manifests([str(path)])
    assert [d.index for d in found.documents] == [1]
    assert found.pods[0].document == 1


def test_attach_metadata_puts_new_metadata_first(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(
        "kind: Job\nmetadata: {name: j}\nspec:\n  template:\n    spec: {containers: []}\n"
    )
    [pod] = load_manifests([str(path)]).pods
    metadata = pod.writable_metadata()
    assert "metadata" not in pod.holder  # nothing is added until something is written
    metadata["annotations"] = {"a": "b"}
    pod.attach_metadata(metadata)
    assert list(pod.holder) == ["metadata", "spec"]
    assert pod.metadata == {"annotations": {"a": "b"}}


def test_missing_path_names_the_path() -> None:
    with pytest.raises(ManifestError, match=r"^nowhere\.yaml: no such file or directory$"):
        load_manifests(["nowhere.yaml"])


def test_libyaml_and_the_pure_python_parser_read_the_same() -> None:
    """The loader uses libyaml when PyYAML has it (about 5x faster on large files), and the
    pure-Python parser otherwise: with the same resolvers, both read every manifest alike."""
    import yaml

    from gomemlimit_operator.cli import manifests

    assert manifests._Loader.__mro__[1] is getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    pure = manifests._kubernetes_loader(yaml.SafeLoader)
    files = sorted((TESTDATA / "manifests").rglob("*.y*ml"))
    assert files
    for path in files:
        text = path.read_text()
        assert list(yaml.load_all(text, Loader=pure)) == list(
            yaml.load_all(text, Loader=manifests._Loader)
        ), path
    assert yaml.load("at: 2024-01-01", Loader=pure) == {"at": "2024-01-01"}  # no timestamps


TRICKY_YAML = [
    "a: 1\nb: 0x1f\nc: 1.5\nd: .inf\ne: true\nf: no\ng: ~\nh: null\ni: '1'\nj: 2024-01-01\n",
    "k: !!binary aGVsbG8=\nl: !!str 12\nm: !!int '7'\n",
    "base: &b {cpu: 1, memory: 1Gi}\nx: *b\ny: *b\n",
    "base: &b {cpu: 1}\nmerged:\n  <<: *b\n  memory: 2Gi\n",
    "? [a, b]\n: complex key\n",
    "dup: 1\ndup: 2\n",
    "list: &l [1, 2]\nother: *l\n",
    "tagged: !!map {a: 1}\nseq: !!seq [1]\nset: !!set {a, b}\nomap: !!omap [a: 1]\n",
    "deep: " + "[" * 150 + "]" * 150 + "\n",
    "1: one\ntrue: yes\n~: nothing\n1.5: float key\n",
    "--- {a: 1}\n---\n--- [x, y]\n",
]


@pytest.mark.parametrize("text", TRICKY_YAML)
def test_the_fast_builder_reads_what_pyyaml_reads(text: str) -> None:
    """_build takes strings, maps and lists itself and leaves everything else to PyYAML's
    SafeConstructor: the result is the same (timestamps aside, which stay strings), with
    every alias a separate copy."""
    import yaml

    from gomemlimit_operator.cli import manifests

    reference = type("Reference", (yaml.SafeLoader,), {})
    reference.yaml_implicit_resolvers = manifests._Loader.yaml_implicit_resolvers
    for loader in (manifests._Loader, manifests._kubernetes_loader(yaml.SafeLoader)):
        try:
            want = list(yaml.load_all(text, Loader=reference))
        except yaml.YAMLError as exc:
            with pytest.raises(type(exc)):
                list(yaml.load_all(text, Loader=loader))
            continue
        got = list(yaml.load_all(text, Loader=loader))
        assert got == want

    documents = list(yaml.load_all("base: &b {cpu: 1}\nx: *b\ny: *b\n", Loader=manifests._Loader))
    document = documents[0]
    assert document["x"] == document["y"] == {"cpu": 1}
    assert document["x"] is not document["y"]
    assert document["x"] is not document["base"]
    # A merge key sends the document down PyYAML's path, which shares the alias: unshared.
    merged = yaml.load("base: &b {c: 1}\nm:\n  <<: *b\nx: *b\n", Loader=manifests._Loader)
    assert merged["x"] == merged["base"] == {"c": 1}
    assert merged["x"] is not merged["base"]


def test_a_recursive_alias_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &a [*a]\n")
    with pytest.raises(ManifestError) as caught:
        load_manifests([str(path)])
    assert str(caught.value) == (
        f"{path}: invalid YAML: an alias refers to itself, or the nesting is too deep"
    )


@pytest.mark.parametrize("value", ["\x85", "team\u2028a", "a\u2029", "x\x85\ny", "two\nlines"])
def test_printed_strings_read_back_the_same(value: str) -> None:
    """Found by the CLI fuzzer: YAML 1.1's other line breaks (NEL, LS, PS) written raw came
    back folded: mutate turned an annotation "\\x85" into " "."""
    document = Document("f.yaml", 0, {"metadata": {"annotations": {value: value}}})
    printed = dump_documents([document])
    assert yaml.safe_load(printed) == document.body
