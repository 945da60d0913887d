"""`wanrt qualify` on the demo model with onnxruntime: a passing, signed report, and a failing check (exit 1) for
each fault it guards against: a changed artifact, outputs that differ from the reference, an edited audit log, a
latency envelope missed, the wrong SELinux type; a report edited after signing fails `wanrt verify`."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from trust_tamper import flip_byte

from wanrt.cli import main
from wanrt.server.audit import AuditLog
from wanrt.trust import qualify

REEF = Path(__file__).parents[2] / "reef" / "model"


@pytest.fixture(scope="module")
def installed(tmp_path_factory, key_pair):
    """A signed copy of the demo model, its recorded reference outputs and an intact audit log."""
    from wanrt.trust.folders import sign_folder
    from wanrt.trust.keys import load_signer

    root = tmp_path_factory.mktemp("install")
    model = root / "model"
    shutil.copytree(REEF, model)
    sign_folder(model, load_signer(key_pair[0]), wanrt_version="test")
    assert main(["qualify", "--model", str(model), "--trust", str(key_pair[1]),
                 "--record-reference", str(root / "reference")]) == 0
    log = AuditLog(root / "audit.jsonl", fsync=False, checkpoint_every=2, signer=load_signer(key_pair[0]))
    for i in range(3):
        log.write({"method": "Generate", "request_id": f"r{i}", "status": "OK"})
    log.close()
    return root


def _qualify(installed, key_pair, out, *extra, model=None, reference=None, audit=None):
    return main(["qualify", "--model", str(model or installed / "model"), "--trust", str(key_pair[1]),
                 "--reference", str(reference or installed / "reference"), "--audit-log",
                 str(audit or installed / "audit.jsonl"), "--out", str(out), "--key", str(key_pair[0]),
                 "--runs", "1", "--max-latency-s", "600", *extra])


def _checks(out):
    report = json.loads((out / qualify.REPORT_JSON).read_text())
    return report, {c["name"]: c for c in report["checks"]}


def test_a_qualified_installation_gets_a_signed_passing_report(installed, key_pair, tmp_path, capsys):
    out = tmp_path / "report"
    assert _qualify(installed, key_pair, out) == 0, capsys.readouterr().out
    report, checks = _checks(out)
    assert report["passed"] is True
    assert {c["stage"] for c in report["checks"]} == {"IQ", "OQ", "PQ"}
    assert checks["reference outputs"]["status"] == "pass" and "sha256" in checks["reference outputs"]["detail"]
    assert checks["bad requests refused"]["data"]["table"][0]["refused_field"] == "frames"
    assert checks["component versions"]["data"]["wanrt"]
    assert "PASSED" in (out / qualify.REPORT_MD).read_text()
    assert main(["verify-signature", str(out), "--trust", str(key_pair[1])]) == 0
    flip_byte(out / qualify.REPORT_MD)  # the report cannot be edited after signing
    assert main(["verify-signature", str(out), "--trust", str(key_pair[1])]) == 2
    assert "qualification.md" in capsys.readouterr().err


def test_a_changed_artifact_fails_iq_and_nothing_runs(installed, key_pair, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(installed / "model", model)
    flip_byte(model / "transformer_2.onnx")
    out = tmp_path / "report"
    assert _qualify(installed, key_pair, out, model=model) == 1
    report, checks = _checks(out)
    assert checks["artifact signature"]["status"] == "fail" and "transformer_2.onnx" in checks["artifact signature"][
        "detail"]
    assert "reference outputs" not in checks  # a model that failed its signature is never run


def test_outputs_other_than_the_reference_fail_oq(installed, key_pair, tmp_path):
    reference = tmp_path / "reference"
    shutil.copytree(installed / "reference", reference)
    data = json.loads((reference / qualify.REFERENCE_JSON).read_text())
    data["cases"][1]["sha256"] = "0" * 64
    (reference / qualify.REFERENCE_JSON).write_text(json.dumps(data))
    out = tmp_path / "report"
    assert _qualify(installed, key_pair, out, reference=reference) == 1
    _, checks = _checks(out)
    assert checks["reference outputs"]["status"] == "fail" and "cases [1] differ" in checks["reference outputs"][
        "detail"]


def test_edited_audit_log_missed_envelope_and_wrong_selinux_type_fail(installed, key_pair, tmp_path):
    audit = tmp_path / "audit.jsonl"
    lines = (installed / "audit.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"r0"', b'"rX"')  # line 1 is the signed genesis
    audit.write_bytes(b"".join(lines))
    out = tmp_path / "report"
    assert _qualify(installed, key_pair, out, "--max-latency-s", "0.000001", "--require-selinux-type",
                    "wanrt_container_t", audit=audit) == 1
    report, checks = _checks(out)
    assert report["passed"] is False
    failed = {name for name, c in checks.items() if c["status"] == "fail"}
    assert failed == {"audit chain", "latency envelope", "SELinux type"}
    assert f"{audit}:3" in checks["audit chain"]["detail"]  # the record after the edited one no longer links


def test_non_deterministic_backends_compare_by_psnr(installed, key_pair, tmp_path):
    """A GPU backend is compared by PSNR against the recorded frames (here the CPU pipeline stands in for it)."""
    from wanrt.engine.loader import load_pipeline
    from wanrt.trust.keys import load_public_key

    pipeline = load_pipeline(installed / "model", "onnxruntime")
    options = qualify.QualifyOptions(installed / "model", "onnxruntime", "cuda:0", [load_public_key(key_pair[1])],
                                     installed / "reference", [], 1, 600.0, None)
    check = qualify._reference_check(options, pipeline)
    assert check.status == "pass" and "PSNR" in check.detail
    reference = tmp_path / "reference"
    shutil.copytree(installed / "reference", reference)
    frames = np.load(reference / "case0.npy")
    np.save(reference / "case0.npy", np.clip(frames.astype(int) + 12, 0, 255).astype(np.uint8))  # ~26 dB
    check = qualify._reference_check(dataclasses.replace(options, reference=reference), pipeline)
    assert check.status == "fail" and check.data["cases"][0]["psnr_db"] < qualify.PSNR_THRESHOLD_DB
