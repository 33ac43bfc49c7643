"""Resumable shards: SIGKILL at every phase of a run then the same command, stuck and planted states, the lock, races.

Runs are real processes: forks of this test process that call `python -m preprocess`'s `main` (they share its
imports, which take ~15 s per fresh interpreter on a busy machine) and, for the lock, one fresh `python -m preprocess`.
"""

import json
import logging
import os
import shlex
import signal
import sys
import traceback
from pathlib import Path

import pytest
from datasets import load_from_disk
from test_preprocess import run_cli, write_umt

from preprocess.__main__ import main
from preprocess.shards import KILL_AT_ENV, KILL_SIGNAL_ENV, PHASES, SETTINGS_FILE, WorkStateError, _OutputLock

TRAIN = [(str(i), [f"tweet{i}", "Obama"], ["O", "B-PER"]) for i in range(5)]
VALID = [(str(10 + i), ["in", "Paris"], ["O", "B-LOC"]) for i in range(3)]
# 5 train tweets in chunks of 2 -> chunks 1-3, 3 valid tweets -> chunks 4-5; the second settings file is the result's.
KILL_POINTS = [*PHASES, "chunk-saved:3", "chunk-done:4", "settings-tmp:2"]


@pytest.fixture()
def tiny(tmp_path):
    """A two-split dataset with captions, and the arguments of a run of it into `<tmp>/out`."""
    data = tmp_path / "data"
    data.mkdir()
    write_umt(data / "train.txt", TRAIN)
    write_umt(data / "valid.txt", VALID)
    captions = tmp_path / "captions.txt"
    captions.write_text(
        "".join(f"{image}.jpg :caption of {image}\n" for image, _, _ in TRAIN + VALID), encoding="utf-8"
    )
    args = ["--data", str(data), "--context", str(captions), "--chunk-size", "2", "--out", str(tmp_path / "out")]
    return tmp_path, args


def run_forked(argv: list[str], log: Path, env: dict[str, str] | None = None, ready=None) -> int:
    """Run `main(argv)` in a forked process with `env` added and stdout/stderr in `log`; return its exit code
    (-9 when SIGKILLed). With `ready` (a pipe's read end), the child waits for one byte on it before starting."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            os.environ.update(env or {})
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            # pytest's capture objects and log handlers are not the descriptors: write where the log is.
            sys.stdout = sys.stderr = os.fdopen(fd, "w", buffering=1)
            logging.getLogger().addHandler(logging.StreamHandler(sys.stderr))
            logging.getLogger().setLevel(logging.INFO)
            if ready is not None:
                os.read(ready, 1)
            code = main(argv)
        except BaseException:  # noqa: BLE001 - the child must never return into pytest
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def rows(folder: Path) -> dict:
    shards = load_from_disk(str(folder))
    return {split: (shards[split].features, shards[split].to_list()) for split in shards}


def leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(out.name + "."))


@pytest.fixture()
def reference(tiny):
    tmp_path, args = tiny
    ref_args = [*args[:-1], str(tmp_path / "ref")]
    assert main(ref_args) == 0
    return rows(tmp_path / "ref"), json.loads((tmp_path / "ref" / SETTINGS_FILE).read_text())


def test_every_kill_point_is_reached_and_the_same_command_recovers(tiny, reference, capsys):
    tmp_path, args = tiny
    out = tmp_path / "out"
    expected_rows, expected_settings = reference
    for point in KILL_POINTS:
        log = tmp_path / "killed.log"
        assert exit_code(run_forked(args, log, {KILL_AT_ENV: point})) == -signal.SIGKILL, (point, log.read_text())
        # Whatever a kill leaves, `<out>` is either absent or the whole, checked result.
        if out.exists():
            assert point in ("result-published", "trash-moved", "done")
            assert rows(out) == expected_rows
        capsys.readouterr()
        assert main(args) == 0, point
        printed = capsys.readouterr().out
        assert "train: 5 tweets in (train.txt), 5 out, 5 with visual context" in printed, point
        assert "validation: 3 tweets in (valid.txt), 3 out" in printed, point
        assert rows(out) == expected_rows, point
        settings = json.loads((out / SETTINGS_FILE).read_text())
        assert settings["data"]["train"]["tweets"] == 5 and settings["aligners"] == expected_settings["aligners"]
        assert leftovers(out) == [], (point, leftovers(out))
        os.system(f"rm -rf {shlex.quote(str(out))}")


def test_a_rerun_skips_the_chunks_a_killed_run_finished(tiny, reference, caplog):
    tmp_path, args = tiny
    out = tmp_path / "out"
    assert exit_code(run_forked(args, tmp_path / "log", {KILL_AT_ENV: "chunk-saved:4"})) == -signal.SIGKILL
    work = tmp_path / "out.partial"
    assert sorted(p.name for p in (work / "train").iterdir()) == [
        "chunk-00000000-00000002",
        "chunk-00000002-00000004",
        "chunk-00000004-00000005",
    ]
    assert [p.name for p in (work / "validation").iterdir()] == ["chunk-00000000-00000002.tmp"]
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert sum("already done" in r.message for r in caplog.records) == 3
    assert sum("(tweets" in r.message for r in caplog.records) == 2
    assert rows(out) == reference[0]


def test_overwrite_killed_after_moving_the_old_result_recovers(tiny, reference):
    tmp_path, args = tiny
    out = tmp_path / "out"
    assert main(args) == 0
    other = [*args, "--separator", " ; ", "--overwrite"]
    # The old result is renamed away (then the killed run had not yet deleted it).
    assert exit_code(run_forked(other, tmp_path / "log", {KILL_AT_ENV: "trash-moved"})) == -signal.SIGKILL
    assert not out.exists() and (tmp_path / "out.trash" / "dataset_dict.json").is_file()
    assert main(other) == 0
    assert leftovers(out) == []
    assert json.loads((out / SETTINGS_FILE).read_text())["builder"]["separator"] == " ; "


def test_a_work_folder_without_readable_settings(tiny, reference, capsys):
    tmp_path, args = tiny
    out, work = tmp_path / "out", tmp_path / "out.partial"
    # What the old code left when killed between creating the folder and writing its settings: every rerun was stuck
    # on "Expecting value: line 1 column 1". Nothing was done yet, so the same command simply starts again.
    work.mkdir()
    (work / SETTINGS_FILE).write_text("")
    assert main(args) == 0
    assert rows(out) == reference[0]

    # Finished chunks without settings cannot be trusted: refused with the exact command that recovers.
    os.system(f"rm -rf {shlex.quote(str(out))}")
    assert exit_code(run_forked(args, tmp_path / "log", {KILL_AT_ENV: "chunk-done:2"})) == -signal.SIGKILL
    (work / SETTINGS_FILE).write_text('{"truncated": ')
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "holds 2 finished chunks but no readable preprocess_settings.json" in err
    command = err.split("to recover, run: ", 1)[1].strip()
    assert command == "python -m preprocess " + shlex.join([*args, "--overwrite"])
    assert main(shlex.split(command)[3:]) == 0
    assert rows(out) == reference[0] and leftovers(out) == []


def test_planted_leftovers_are_cleaned_and_a_damaged_chunk_is_redone(tiny, reference, caplog):
    tmp_path, args = tiny
    out, work = tmp_path / "out", tmp_path / "out.partial"
    assert exit_code(run_forked(args, tmp_path / "log", {KILL_AT_ENV: "chunk-done:2"})) == -signal.SIGKILL
    # A chunk half-written when killed, a half-deleted folder, and a finished chunk whose data file was damaged.
    half = work / "train" / "chunk-00000004-00000005.tmp"
    half.mkdir()
    (half / "data-00000-of-00001.arrow").write_bytes(b"\x00" * 10)
    (tmp_path / "out.trash" / "train").mkdir(parents=True)
    damaged = work / "train" / "chunk-00000002-00000004" / "data-00000-of-00001.arrow"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with caplog.at_level("INFO"):
        assert main(args) == 0
    assert "chunk-00000002-00000004 does not hold the tweets 2-4 it should; redoing it" in caplog.text
    assert sum("already done" in r.message for r in caplog.records) == 1
    assert rows(out) == reference[0] and leftovers(out) == []


def test_refusals_name_what_is_wrong_and_the_command_that_recovers(tiny, reference, capsys):
    tmp_path, args = tiny
    out = tmp_path / "out"
    # A folder that is not ours is never deleted, not even with --overwrite.
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        assert main([*args, *extra]) == 2
        err = capsys.readouterr().err
        assert "exists but is not a dataset written by `python -m preprocess`" in err and "to recover" not in err
    assert (out / "notes.txt").read_text() == "mine"
    os.system(f"rm -rf {shlex.quote(str(out))}")

    # Unfinished work with other settings.
    assert exit_code(run_forked(args, tmp_path / "log", {KILL_AT_ENV: "chunk-done"})) == -signal.SIGKILL
    other = [*args, "--max-words", "2"]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "out.partial was made with different settings (changed: builder)" in err
    assert err.strip().endswith("to recover, run: python -m preprocess " + shlex.join([*other, "--overwrite"]))
    assert main([*other, "--overwrite"]) == 0
    assert load_from_disk(str(out))["train"]["visual_context"] == ["caption of"] * 5

    # A finished result whose rows do not match its data (tampered with) is not trusted.
    shards = load_from_disk(str(out))
    shards["train"] = shards["train"].select(range(4))
    shards.save_to_disk(str(tmp_path / "tampered"))
    for name in ("train", "dataset_dict.json"):
        os.system(f"rm -rf {shlex.quote(str(out / name))} && cp -r {tmp_path / 'tampered' / name} {out}")
    assert main(other) == 2
    assert "split 'train' holds 4 tweets, the data 5 (or other ids)" in capsys.readouterr().err


def test_a_live_run_holds_out_and_a_real_second_run_refuses(tiny, reference, capsys):
    tmp_path, args = tiny
    out, work = tmp_path / "out", tmp_path / "out.partial"
    # Run A frozen (SIGSTOP) just after its second chunk, holding the lock.
    first = run_forked(args, tmp_path / "a.log", {KILL_AT_ENV: "chunk-done:2", KILL_SIGNAL_ENV: "SIGSTOP"})
    code = None
    try:
        assert os.WIFSTOPPED(os.waitpid(first, os.WUNTRACED)[1])
        before = sorted(str(p.relative_to(work)) for p in work.rglob("*"))
        assert "train/chunk-00000002-00000004" in before
        # Run B, a fresh `python -m preprocess`, into the same --out.
        second = run_cli(*args, timeout=300)
        assert second.returncode == 2, second.stderr
        assert f"another run (pid {first} on " in second.stderr and f"is writing {out}" in second.stderr
        assert second.stderr.strip().endswith("to recover, run: python -m preprocess " + shlex.join(args))
        assert sorted(str(p.relative_to(work)) for p in work.rglob("*")) == before
        os.kill(first, signal.SIGCONT)
        code = exit_code(first)
    finally:
        # Never leave a frozen run behind, whatever failed (and never signal its pid once it is reaped).
        if code is None:
            os.kill(first, signal.SIGKILL)
            os.waitpid(first, 0)
    assert code == 0, (tmp_path / "a.log").read_text()
    assert rows(out) == reference[0] and leftovers(out) == []
    # The command B was told to rerun now reuses A's result.
    assert main(args) == 0


def test_the_lock_follows_its_holder_and_not_a_stale_file(tmp_path):
    out = tmp_path / "out"
    lock_path = tmp_path / "out.lock"
    lock_path.write_text("pid 1 on elsewhere since long ago\n")  # left by a killed run: no lock is held
    with _OutputLock(lock_path, out) as lock:
        # Read through the lock's own descriptor: closing any other descriptor of the file would drop a POSIX lock.
        assert os.pread(lock.fd, 200, 0).decode().startswith(f"pid {os.getpid()} on ")
        pid = os.fork()
        if pid == 0:
            try:
                with _OutputLock(lock_path, out):
                    os._exit(1)
            except WorkStateError as err:
                os._exit(0 if err.rerun_with == [] and f"another run (pid {os.getppid()} on " in str(err) else 2)
            os._exit(3)
        assert exit_code(pid) == 0
    assert not lock_path.exists()


def test_racing_runs_into_one_out_leave_one_whole_result(tiny, reference):
    tmp_path, args = tiny
    out = tmp_path / "out"
    outcomes = []
    for _ in range(3):
        read, write = os.pipe()
        pids = [run_forked(args, tmp_path / f"race{i}.log", ready=read) for i in range(2)]
        os.write(write, b"go")  # both start at once
        codes = [exit_code(pid) for pid in pids]
        logs = [(tmp_path / f"race{i}.log").read_text() for i in range(2)]
        # One run writes the result; the other refuses while the first holds --out (or, had it started only after
        # the first ended, finds the result complete).
        refused = [code == 2 and "another run (pid " in log for code, log in zip(codes, logs)]
        reused = [code == 0 and "is already complete" in log for code, log in zip(codes, logs)]
        assert codes.count(0) >= 1 and all(c == 0 or r for c, r in zip(codes, refused)), logs
        assert any(refused) or any(reused), logs
        outcomes.append(any(refused))
        assert rows(out) == reference[0] and leftovers(out) == []
        os.system(f"rm -rf {shlex.quote(str(out))}")
        os.close(read)
        os.close(write)
    # Started together, the runs really overlapped.
    assert any(outcomes)


def test_bad_input_writes_nothing(tmp_path, capsys):
    data = tmp_path / "train.txt"
    out = tmp_path / "out"
    cases = {
        b"IMGID:1\nHello\tO\n\nIMGID:2\nEvent\tNNP\tB-MISC\n": f"{data}:5: 3 tab-separated columns, expected 2",
        b"": f"{data}: no tweets (the file is empty)",
        "IMGID:1\ncaf\u00e9\tO\n".encode("latin-1"): f"{data}:2: not valid utf-8",
    }
    for content, message in cases.items():
        data.write_bytes(content)
        assert main(["--data", str(data), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["train.txt"]
    # The --context files are read before anything is written too.
    write_umt(data, [("1", ["Hi"], ["O"]), ("2", ["Bob"], ["B-PER"])])
    captions = tmp_path / "captions.txt"
    cases = {
        "1.jpg :a caf\u00e9\n".encode("latin-1"): f"{captions}: not UTF-8 text after line 0",
        b"": "hold a context for none of the 2 images of the data",
        b"71406.jpg :a caption of another dataset\n": "hold a context for none of the 2 images of the data",
        b"1.jpg :fine\nno separator\n": f"{captions}:2: expected '<IMGID>.jpg :<caption>'",
    }
    for content, message in cases.items():
        captions.write_bytes(content)
        assert main(["--data", str(data), "--context", str(captions), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["captions.txt", "train.txt"]
