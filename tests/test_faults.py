"""Faults survived (issue 19), the quick versions of `python -m benchmarks.faults`:

- kill -9 once per job (prepare of the synthetic set and of MSR-VTT-layout clips, train with its
  asynchronous checkpoints, export), at a moment where something is being written, then the same
  command again: the output equals an uninterrupted run's;
- a full disk while a checkpoint, a dataset shard and an index is written: one clear error line
  naming the path, the last good state intact, and after space is freed the same command
  finishes with the uninterrupted run's output (a real tmpfs as root; RLIMIT_FSIZE otherwise);
- bad inputs: annotation files and videos, each reported with the file and the reason, or
  prepared correctly where they are fine, with the good videos around them prepared.

Every job runs as a separate `tvr-jax` process, as a user runs it.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import faults
from data_pipeline import annotations as annotations_lib
from data_pipeline import prepare as prep
from data_pipeline import video as video_lib
from tvr_jax import cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Sources, the prepared synthetic set and an uninterrupted training run (the train reference)."""
    root = str(tmp_path_factory.mktemp("faults"))
    previous = faults.CACHE_DIR
    faults.CACHE_DIR = os.path.join(root, "xla-cache")  # later runs reuse the first one's compiled programs
    jobs = faults.jobs(root, ["prepare_synthetic", "prepare_msrvtt", "train", "export"], lambda message: None)
    yield root, jobs
    faults.CACHE_DIR = previous


def _npz(folder):
    try:
        return len([n for n in os.listdir(folder) if n.endswith(".npz")])
    except OSError:
        return 0


# ==============================================================================================
# kill -9, then the same command again
# ==============================================================================================
@pytest.mark.parametrize("dataset", ["synthetic", "msrvtt"])
def test_prepare_killed_while_decoding_or_writing_resumes_to_the_same_dataset(world, dataset):
    root, jobs = world
    job = jobs[f"prepare_{dataset}"]
    ref, out = os.path.join(root, f"kill-{dataset}-ref"), os.path.join(root, f"kill-{dataset}")
    faults.run_to_end(job.command(ref))
    total = json.load(open(os.path.join(ref, prep.REPORT_FILE)))[dataset]["decoded_this_run"]
    cache = os.path.join(out, "_work", dataset, "frames")
    if dataset == "msrvtt":  # mid-decoding: some videos in the decode cache, not all
        ready = lambda o: _npz(cache) >= 3
    else:  # every video decoded: the TFDS shards are being written next
        ready = lambda o: _npz(cache) >= total or os.path.isdir(os.path.join(o, dataset))
    assert faults.run_killed_when(job.command(out), out, ready)
    assert not os.path.isfile(os.path.join(prep.dataset_dir(out, dataset), "dataset_info.json"))  # nothing half visible
    restarts, codes, tail = faults.restart_until_done(job.command(out))
    assert codes == [0], tail
    report = json.load(open(os.path.join(out, prep.REPORT_FILE)))[dataset]
    assert report["reused_from_cache"] >= 3 and report["reused_from_cache"] + report["decoded_this_run"] == total
    equal, lost, detail = job.compare(ref, out)
    assert (equal, lost) == (True, 0), detail


def _checkpoint_being_written(workdir):
    names = os.listdir(os.path.join(workdir, "checkpoints")) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    return any(n.isdigit() for n in names) and any("tmp" in n for n in names)


def test_train_killed_during_an_asynchronous_checkpoint_write_resumes_to_the_same_run(world):
    root, jobs = world
    job, ref, out = jobs["train"], os.path.join(root, "trained"), os.path.join(root, "kill-train")
    state = {}

    def ready(workdir):  # a checkpoint committed and the next one half written (orbax's temporary folder)
        if _checkpoint_being_written(workdir):
            state["at_kill"] = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
            return True
        return False

    assert faults.run_killed_when(job.command(out), out, ready)
    tmp = [n for n in state["at_kill"] if "tmp" in n]
    assert tmp and any(n.isdigit() for n in state["at_kill"]), state
    restarts, codes, tail = faults.restart_until_done(job.command(out))
    assert codes == [0], tail
    # The half-written checkpoint was never used and is gone; the run ended where the reference did.
    assert sorted(os.listdir(os.path.join(out, "checkpoints"))) == sorted(os.listdir(os.path.join(ref, "checkpoints"))) == ["10", "12"]
    assert [m["step"] for m in faults.read_metrics(out)] == list(range(1, 13))
    equal, lost, detail = faults.compare_train(ref, out)
    assert (equal, lost) == (True, 0), detail


def test_export_killed_while_writing_resumes_and_a_finished_export_reruns_as_a_no_op(world):
    root, jobs = world
    job = jobs["export"]
    ref, out = os.path.join(root, "export-ref"), os.path.join(root, "kill-export")
    faults.run_to_end(job.command(ref))
    assert faults.run_killed_when(job.command(out), out, lambda o: os.path.isdir(os.path.join(o, "shard-00000.tmp")))
    assert not os.path.exists(os.path.join(out, "manifest.json"))
    restarts, codes, tail = faults.restart_until_done(job.command(out))
    assert codes == [0], tail
    equal, lost, detail = faults.compare_export(ref, out)
    assert (equal, lost) == (True, 0), detail
    # Killed after its commit, before its exit: the same command again finds the export done.
    before = faults.read_index(out)
    again = faults.run_to_end(job.command(out))
    assert again.returncode == 0 and "exported 16 videos" in again.stdout
    assert faults._equal(faults.read_index(out), before)
    # Another export into it is still refused.
    other = [a if a != "test" else "train" for a in job.command(out)]
    refused = faults.run_to_end(other, preexec=os.setsid)
    assert refused.returncode == 2 and "already holds an index" in refused.stderr


# ==============================================================================================
# Disk full
# ==============================================================================================
MECHANISMS = [pytest.param("tmpfs", marks=pytest.mark.skipif(not faults.can_mount(), reason="mounting a tmpfs needs root")),
              "fsize"]


@pytest.mark.parametrize("mechanism", MECHANISMS)
@pytest.mark.parametrize("kind", faults.DISK_FULL)
def test_disk_full_stops_with_the_path_keeps_the_last_good_state_and_a_rerun_finishes(world, kind, mechanism):
    root, jobs = world
    job = jobs[faults.DISK_FULL_JOB[kind]]
    ref = {"checkpoint": os.path.join(root, "trained"), "dataset_shard": os.path.join(root, "data"),
           "index": os.path.join(root, "export-ref")}[kind]
    if not os.path.isdir(ref):
        faults.run_to_end(job.command(ref))
    result = faults.disk_full_case(kind, job, os.path.join(root, mechanism), lambda m: None, mechanism, ref=ref)
    checks = result["checks"]
    assert checks["first_exit_code"] == 3 and checks["clear_error"], checks
    message = checks["message"]
    assert message.startswith(f"tvr-jax {job.command('x')[3]}: error: the disk is full: ")
    if kind == "checkpoint":
        assert ".orbax-checkpoint-tmp" in message, message  # the file being written
        assert checks["committed_before"] and f"the last good checkpoint, step {checks['committed_before'][-1]}, is intact" in message
    elif kind == "dataset_shard":
        assert "synthetic-train.array_record" in message and "incomplete." in message, message
        assert checks["cached_videos"] == 112 and not checks["half_dataset_visible"]
    else:
        assert "nothing of it is visible" in message and not checks["manifest_visible"]
    assert checks["intact"] and checks["rerun_exit_code"] == 0
    assert (checks["equal"], checks["data_lost"]) == (True, 0), checks["detail"]
    assert result["survived_equal"] == 1


@pytest.mark.parametrize("error, path", [
    (ValueError('RESOURCE_EXHAUSTED: Error writing "a/0" in OCDBT database at local file "/w/checkpoints/4.orbax-checkpoint-tmp/s/": '
                'Failed writing: "/w/checkpoints/4.orbax-checkpoint-tmp/s/d/5f": Failed to write 11 bytes to file 8: No space '
                "left on device [os_error_code='28']"), "/w/checkpoints/4.orbax-checkpoint-tmp/s/d/5f"),
    (RuntimeError('Failed to finalize writing of split "train": write() failed: No space left on device; writing '
                  "/d/synthetic/incomplete.X_1.0.0/synthetic-train.array_record-00000-of-00001; at byte 49152"),
     "/d/synthetic/incomplete.X_1.0.0/synthetic-train.array_record-00000-of-00001"),
    (OSError(28, "No space left on device", "/i/shard-00000.tmp/frames.npy"), "/i/shard-00000.tmp/frames.npy"),
    (OSError(27, "File too large"), None),
    (OSError(None, "32768 requested and 10176 written", "/i/shard-00000.tmp/frames.npy.tmp.npy"),  # numpy's short write
     "/i/shard-00000.tmp/frames.npy.tmp.npy"),
])
def test_disk_full_errors_are_recognised_with_their_file(error, path):
    assert cli.disk_full(error) == (True, path)
    wrapped = RuntimeError("while exporting")
    wrapped.__cause__ = error
    assert cli.disk_full(wrapped) == (True, path)
    assert cli.disk_full(ValueError("no such checkpoint")) == (False, None)
    assert cli.disk_full(OSError(13, "Permission denied")) == (False, None)


# ==============================================================================================
# Bad inputs
# ==============================================================================================
def test_bad_inputs_are_reported_with_file_and_reason_or_prepared_right_and_nothing_around_them_lost(tmp_path):
    result = faults.bad_inputs_case(str(tmp_path), lambda message: None)
    items = {i["input"]: i for i in result["items"]}
    assert len(items) == result["injected"] == len(faults.BAD_VIDEO_EXPECTED) + 4 + len(faults.MALFORMED) == 23
    wrong = [(name, i["right"], i["seen"]) for name, i in items.items() if not i["ok"]]
    assert not wrong, wrong
    assert result["survived_equal"] == 23 and result["data_lost"] == 0
    # What was seen, for the cases whose right behaviour is to be reported:
    assert items["video audio_only.mp4"]["seen"] == "reported: no_frames (the file holds no video stream (audio only))"
    assert items["video text_named_mp4.mp4"]["seen"].startswith("reported: unreadable")
    # ... and to be prepared right (a rotation flag is not an error: the frames are stored turned).
    assert items["video rotated.mp4"]["seen"] == "prepared, 3 frames of (64, 48, 3)"
    assert items["video huge.mp4"]["seen"] == "prepared, 1 frames of (224, 398, 3)"
    assert items["annotations: duplicate id"]["seen"].startswith("tvr-jax prepare: error: ")


def test_sample_times_of_a_clip_shorter_than_one_window_stay_inside_it():
    np.testing.assert_allclose(video_lib.sample_times(0.2, 1.0), [0.1])
    np.testing.assert_allclose(video_lib.sample_times(0.0, 1.0), [0.0])
    np.testing.assert_allclose(video_lib.sample_times(2.0, 1.0), [0.5, 1.5])  # unchanged otherwise
    np.testing.assert_array_equal(video_lib.frame_at(np.array([0.0, 0.1, 1.0, 1.5]), np.array([0.05, 0.5, 1.0, 1.2, 9.0])),
                                  [0, 1, 2, 2, 3])


@pytest.mark.parametrize("name, dataset, files, message", faults.MALFORMED, ids=[m[0] for m in faults.MALFORMED])
def test_malformed_annotation_files_are_refused_naming_file_and_entry(tmp_path, name, dataset, files, message):
    path = faults.write_malformed(str(tmp_path / "ann"), dataset, files)
    with pytest.raises(annotations_lib.AnnotationError, match=message):
        annotations_lib.load_annotations(dataset, path)


def test_the_long_mode_documents_itself_and_the_report_renders_only_the_numbers_it_is_given():
    help_text = subprocess.run([sys.executable, "-m", "benchmarks.faults", "--help"], cwd=faults.ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "--rounds" in help_text and "--jobs" in help_text
    results = {"meta": {"command": "python -m benchmarks.faults --rounds 3", "cpu": "CPU X", "cpus": 2, "date": "2026-01-01",
                        "jax": "0.0"}, "python": "3.11", "wall_s": 120.0, "reproduce": "python -m benchmarks.faults --rounds 3 --jobs {jobs}",
               "kill": [{"job": "train", "injected": 3, "survived_equal": 2, "data_lost": 0, "bit_equal": 1,
                         "rounds": [{"killed": True, "equal": True, "state_at_kill": "4 steps logged, checkpoints [2]"},
                                    {"killed": True, "equal": True, "state_at_kill": "start-up or compiling (no step logged)"},
                                    {"killed": True, "equal": False, "state_at_kill": "4 steps logged, checkpoints [2]"}]}],
               "disk_full": [{"kind": "index", "mechanism": "fsize", "injected": 1, "survived_equal": 1, "data_lost": 0, "checks": {}}]}
    text = faults.render_reliability(results)
    assert "| kill -9 during `train` (asynchronous checkpoints) | 3 | 2 | 0 | `python -m benchmarks.faults --rounds 3 --jobs train` |" in text
    assert "| disk full while an index is written (fsize) | 1 | 1 | 0 |" in text
    assert "2 x 4 steps logged" in text and "Failures:" in text and "CPU X (2 cores), 2026-01-01" in text


# ==============================================================================================
# A damaged newest checkpoint, two trainers: through the command line
# ==============================================================================================
def test_a_damaged_newest_checkpoint_is_skipped_with_a_warning_and_none_restoring_is_one_clear_line(world):
    root, jobs = world
    # (A file removed instead of truncated: the long mode, `python -m benchmarks.faults --jobs damaged_checkpoint`.)
    result = faults.damaged_checkpoint_case(jobs["train"], root, os.path.join(root, "trained"), lambda message: None,
                                            variants=("truncated", "all damaged"))
    cases = {c["variant"]: c for c in result["cases"]}
    c = cases["truncated"]
    assert (c["exit_code"], c["warned"], c["equal"], c["tracebacks"]) == (0, True, True, 0), c["stderr_tracebacks"][:3000]
    every = cases["all damaged"]
    assert every["exit_code"] == 2 and every["tracebacks"] == 0, every["stderr_tracebacks"][:3000]
    assert "no checkpoint in" in every["message"] and "step 12: " in every["message"] and "step 10: " in every["message"]
    assert every["message"].startswith("tvr-jax train: error: no checkpoint in ")
    assert result["survived_equal"] == 2 and result["data_lost"] == 0

def test_only_the_echoes_of_a_failed_checkpoint_are_dropped(monkeypatch):
    """The CLI's hooks drop what orbax's abandoned reads and writes report after the fact (the failure
    itself is reported once by the command): TensorStore's completions on the closed loop, orbax's
    coroutines and tasks raising when collected. Every other late error still prints."""
    def code_in(package):
        namespace = {}
        source = "async def read():\n    pass\ndef fail(cause=None):\n    raise Exception('reading array index') from cause\n"
        exec(compile(source, os.path.join(os.sep, "site-packages", package, "serialization.py"), "exec"), namespace)
        return namespace

    def raised(package, cause=None):
        try:
            code_in(package)["fail"](cause)
        except Exception as error:
            return error

    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    monkeypatch.setattr(cli.threading, "excepthook", lambda a: seen.append(a.exc_value))
    asyncio_log, absl_log = logging.getLogger("asyncio"), logging.getLogger("absl")
    monkeypatch.setattr(asyncio_log, "filters", [])
    monkeypatch.setattr(absl_log, "filters", [])
    cli._quiet_abandoned_checkpoint_io()
    orbax_read, our_read = code_in("orbax")["read"](), code_in("tvr_jax")["read"]()
    report = lambda error, where=None: type("U", (), {"exc_value": error, "object": where})()
    dropped = [report(Exception("reading array index"), orbax_read), report(RuntimeError("Event loop is closed")),
               report(raised("orbax")), report(raised("tvr_jax", cause=raised("orbax")))]
    kept = [report(Exception("ours"), our_read), report(RuntimeError("Event loop is closed?")), report(raised("tvr_jax"))]
    for r in dropped + kept:
        sys.unraisablehook(r)
    for r in dropped[1:] + kept[1:]:
        cli.threading.excepthook(r)
    for coroutine in (orbax_read, our_read):
        coroutine.close()
    assert seen == [r.exc_value for r in kept] + [r.exc_value for r in kept[1:]]
    # Logged: asyncio's report of a task whose exception nobody retrieved is dropped when the error came
    # out of orbax; orbax's own lines about a failed write keep their message and lose the traceback.
    logged = []
    for log in (asyncio_log, absl_log):
        log.addFilter(lambda r: logged.append((r.getMessage(), r.exc_info and r.exc_info[1])) or False)
        for error in (raised("orbax"), raised("tvr_jax")):
            log.error("Task exception was never retrieved" if log is asyncio_log else "Save Finalize thread failed.",
                      exc_info=(type(error), error, error.__traceback__))
    assert [(message, error and cli._raised_in_orbax(error)) for message, error in logged] == [
        ("Task exception was never retrieved", False), ("Save Finalize thread failed.", None),
        ("Save Finalize thread failed.", False)]


def test_two_trainers_on_one_workdir_one_refuses_naming_the_other(world):
    root, jobs = world
    result = faults.two_trainers_case(jobs["train"], root, os.path.join(root, "trained"), lambda message: None)
    checks = result["checks"]
    assert sorted(checks["exit_codes"]) == [0, 2], checks
    assert checks["names_first"] and checks["tracebacks"] == 0 and "another --workdir" in checks["message"]
    assert checks["equal"] and result["survived_equal"] == 1
