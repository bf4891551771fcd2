"""Batch mode of the runner: every row of a VAP-Data ``benchmark.csv`` through one ComfyUI server.

    python workflows/run.py --csv data/VAP-Data/benchmark.csv --output-dir out/ [--side-by-side]

Per row (columns as in the official bench scripts): ``video_paths`` is the target video whose FIRST frame is
the start image, ``ref_video_path`` the reference, ``tar_video_caption`` / ``ref_video_caption`` the two
captions; CogVideoX workflows also take ``ref_video_path_2``/``_3`` with ``ref_video_caption_2``/``_3``.
Outputs: ``row_NNNN.mp4`` (and ``row_NNNN_side_by_side.mp4``: [reference | target | generated]), written
under a temporary name and renamed when complete, so a rerun skips finished rows and an interrupted row
leaves nothing under a final name; ``summary.csv`` / ``summary.json`` (row, status, seconds, output, error).
"""
from __future__ import annotations

import copy
import csv
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field

from . import client as ch

TARGET_VIDEO, REF_VIDEO, PROMPT, REF_PROMPT = "video_paths", "ref_video_path", "tar_video_caption", "ref_video_caption"
MAX_REFERENCES = 3           # the CogVideoX node takes references 1-3 (``reference_frames_2`` ...)
SUMMARY_FIELDS = ("row", "status", "seconds", "output", "side_by_side", "error", "server")


class RowError(Exception):
    """Something wrong with a row's own inputs: reported once, never retried."""


@dataclass
class Row:
    index: int                                    # 0-based data row, as the official bench scripts number them
    target_video: str = ""
    prompt: str = ""
    references: list[tuple[str, str]] = field(default_factory=list)  # (video, caption), reference 1 first
    problem: str | None = None                    # why the row cannot run (found before anything is sent)


@dataclass
class RowResult:
    row: int
    status: str                                   # done | skipped | failed
    seconds: float = 0.0
    output: str = ""
    side_by_side: str = ""
    error: str = ""
    server: str = ""                              # the server that produced it, or was running it when it failed


# ------------------------------------------------------------------------------------------ reading rows

def _column(record: dict, name: str) -> str:
    return (record.get(name) or "").strip()


def read_rows(csv_path: str, data_dir: str | None = None) -> list[Row]:
    """Rows of a benchmark CSV with absolute paths; a row whose files or captions are missing carries
    ``problem`` (the run reports it and goes on)."""
    data_dir = os.path.abspath(data_dir or os.path.dirname(os.path.abspath(csv_path)))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (TARGET_VIDEO, REF_VIDEO, PROMPT, REF_PROMPT) if c not in (reader.fieldnames or [])]
        if missing:
            raise ch.HeadlessError(f"{csv_path} lacks the column(s) {', '.join(missing)} (the VAP-Data benchmark "
                                   f"columns: {TARGET_VIDEO}, {REF_VIDEO}, {PROMPT}, {REF_PROMPT}).")
        records = list(reader)
    rows = []
    for index, record in enumerate(records):
        row = Row(index, prompt=_column(record, PROMPT))
        target = _column(record, TARGET_VIDEO)
        row.target_video = os.path.join(data_dir, target) if target else ""
        problems = []
        for k in range(1, MAX_REFERENCES + 1):
            suffix = "" if k == 1 else f"_{k}"
            video, caption = _column(record, REF_VIDEO + suffix), _column(record, REF_PROMPT + suffix)
            if k > 1 and not video and not caption:
                continue
            if not video:
                problems.append(f"{REF_VIDEO + suffix} is empty")
            if not caption:
                problems.append(f"{REF_PROMPT + suffix} is empty")
            row.references.append((os.path.join(data_dir, video) if video else "", caption))
        if not target:
            problems.append(f"{TARGET_VIDEO} is empty")
        if not row.prompt:
            problems.append(f"{PROMPT} is empty")
        for path in [row.target_video] + [v for v, _ in row.references]:
            if path and not os.path.isfile(path):
                problems.append(f"video not found: {path}")
        row.problem = "; ".join(problems) or None
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ videos

def _decode(path: str, limit: int | None = None):
    """RGB PIL frames of a video (the first ``limit``); raises RowError for an unreadable file."""
    import av
    try:
        with av.open(path) as container:
            stream = container.streams.video[0]
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_image().convert("RGB"))
                if limit is not None and len(frames) >= limit:
                    break
            fps = float(stream.average_rate) if stream.average_rate else 16.0
    except (av.error.FFmpegError, IndexError, OSError) as e:
        raise RowError(f"cannot read the video {path}: {e}") from None
    if not frames:
        raise RowError(f"the video {path} has no frame")
    return frames, fps


def check_video(path: str) -> None:
    """Raise RowError unless ``path`` decodes to at least one frame (before it is sent to a server)."""
    _decode(path, limit=1)


def write_start_image(target_video: str, dest: str) -> str:
    """The target video's first frame as a PNG (the official bench's start image)."""
    _decode(target_video, limit=1)[0][0].save(dest)
    return dest


def is_complete(path: str) -> bool:
    """A finished output: present and decodable (outputs are renamed into place only when whole)."""
    if not os.path.isfile(path):
        return False
    try:
        _decode(path, limit=1)
        return True
    except RowError:
        return False


def write_video(frames, fps: float, dest: str) -> str:
    """H.264 mp4 written under a temporary name and renamed into place."""
    import av
    import numpy as np
    tmp = _partial(dest)
    w, h = frames[0].size
    with av.open(tmp, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps) or 16)
        stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        for image in frames:
            array = np.asarray(image)[: stream.height, : stream.width]
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, dest)
    return dest


def side_by_side(reference: str, target: str, generated: str, dest: str) -> str:
    """[reference | target | generated] per generated frame, as the official bench scripts write it: the
    reference and target frames are picked evenly over their clips and Lanczos-resized to the generated size."""
    from PIL import Image
    from vap_core.video import select_indices
    out, fps = _decode(generated)
    w, h = out[0].size
    panels = []
    for path in (reference, target):
        frames, _ = _decode(path)
        panels.append([frames[i].resize((w, h), Image.LANCZOS) for i in select_indices(len(frames), len(out), "evenly")])
    joined = []
    for ref, tar, gen in zip(panels[0], panels[1], out):
        canvas = Image.new("RGB", (3 * w, h))
        for k, image in enumerate((ref, tar, gen)):
            canvas.paste(image, (k * w, 0))
        joined.append(canvas)
    return write_video(joined, fps, dest)


def _partial(path: str) -> str:
    root, ext = os.path.splitext(path)
    return f"{root}.partial{ext}"


# ------------------------------------------------------------------------------------------ graph edits

def row_prompt(prompt: dict, row: Row, image: str, references: list[str], prefix: str) -> dict:
    """The workflow for one row: captions, start image, reference video(s), a per-row output prefix. References
    2-3 (CogVideoX) get copies of the reference loader and caption nodes wired into the conditioning node."""
    from .cli import TITLE_PROMPT, TITLE_REF_PROMPT, set_inputs, set_text
    out = copy.deepcopy(prompt)
    set_text(out, TITLE_PROMPT, row.prompt)
    set_text(out, TITLE_REF_PROMPT, row.references[0][1])
    set_inputs(out, image, references[0])
    for node in out.values():  # SaveVideo, and any other saver the workflow has (SaveLatent, SaveImage...)
        if "filename_prefix" in node.get("inputs", {}):
            node["inputs"]["filename_prefix"] = prefix
    if len(references) > 1:
        _add_references(out, row, references)
    return out


def _add_references(out: dict, row: Row, references: list[str]) -> None:
    """References 2-3 of a CogVideoX row: copies of the first reference's loader (and Encode Reference node, where
    the workflow has one) and caption node, wired into the conditioning node's reference_k / ref_positive_k."""
    encoded = ch.nodes_of(out, "VAPCogConditioningFromReference")
    conditioning = encoded or ch.nodes_of(out, "VAPCogConditioning")
    if not conditioning:
        raise RowError(f"the row has {len(references)} references; only CogVideoX workflows take more than one "
                       "(VAP CogVideoX Conditioning from Reference)")
    cond = out[conditioning[0]]["inputs"]
    caption = cond["ref_positive"][0]
    encode = cond["reference"][0] if encoded else None
    loader = out[encode]["inputs"]["reference_frames"][0] if encoded else cond["reference_frames"][0]
    next_id = max(int(k) for k in out if k.isdigit()) + 1
    for k, ((_, text), video) in enumerate(zip(row.references[1:], references[1:]), start=2):
        new_loader, new_caption, new_encode = str(next_id), str(next_id + 1), str(next_id + 2)
        next_id += 3
        out[new_loader] = copy.deepcopy(out[loader])
        out[new_loader]["inputs"]["file"] = video
        out[new_loader].setdefault("_meta", {})["title"] = f"Reference video {k}"
        out[new_caption] = copy.deepcopy(out[caption])
        out[new_caption]["inputs"]["text"] = text
        out[new_caption].setdefault("_meta", {})["title"] = f"Reference caption {k}"
        cond[f"ref_positive_{k}"] = [new_caption, 0]
        if encoded:
            out[new_encode] = copy.deepcopy(out[encode])
            out[new_encode]["inputs"]["reference_frames"] = [new_loader, 0]
            out[new_encode].setdefault("_meta", {})["title"] = f"Encode reference {k}"
            cond[f"reference_{k}"] = [new_encode, 0]
        else:
            cond[f"reference_frames_{k}"] = [new_loader, 0]


# ------------------------------------------------------------------------------------------ running

class BatchProgress:
    """The overall line (rows done / total, failures, ETA), printed after each row beside the per-step bars."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.finished = self.failed = 0
        self.generated_seconds: list[float] = []

    def update(self, result: RowResult) -> None:
        self.finished += 1
        self.failed += result.status == "failed"
        if result.status == "done":
            self.generated_seconds.append(result.seconds)
        left = self.total - self.finished
        mean = sum(self.generated_seconds) / len(self.generated_seconds) if self.generated_seconds else None
        eta = "?" if mean is None else time.strftime("%H:%M:%S", time.gmtime(mean * left))
        width = 30
        done = width * self.finished // max(1, self.total)
        self.stream.write(f"[batch] [{'#' * done}{'.' * (width - done)}] {self.finished}/{self.total} rows "
                          f"({self.failed} failed), ETA {eta} - row {result.row}: {result.status}"
                          + (f" ({result.error})" if result.error else "") + "\n")
        self.stream.flush()


class ServerFault(Exception):
    """The server failed, not the row (it died, stopped answering, ran out of memory): the row goes to another."""


# execution errors blamed on the server rather than on the row's inputs
SERVER_FAULT_TYPES = ("OutOfMemory", "CUDA", "AcceleratorError")


class RowRunner:
    """Runs rows on one server: upload, queue, wait, download, side-by-side. ``server`` is the ComfyServer
    when it was started here (its process tells whether it is still alive)."""

    def __init__(self, args, prompt: dict, client, output_dir: str, work: str, server=None, name: str | None = None):
        self.args, self.prompt, self.client, self.server = args, prompt, client, server
        self.output_dir, self.work = output_dir, work
        self.name = name or client.address

    def outputs(self, row: Row) -> tuple[str, str | None]:
        base = os.path.join(self.output_dir, f"row_{row.index:04d}")
        return base + ".mp4", (base + "_side_by_side.mp4" if self.args.side_by_side else None)

    def done_already(self, row: Row) -> bool:
        video, sbs = self.outputs(row)
        return is_complete(video) and (sbs is None or is_complete(sbs))

    def healthy(self) -> bool:
        if self.server is not None and not self.server.alive():
            return False
        try:
            self.client.get_json("/system_stats")
            return True
        except (OSError, ValueError):
            return False

    def run(self, row: Row, on_event=None) -> RowResult:
        """The row's video (and side-by-side); raises RowError (the row's fault) or ServerFault."""
        started = time.monotonic()
        if row.problem:
            raise RowError(row.problem)
        for path, _ in row.references:
            check_video(path)
        image = write_start_image(row.target_video, os.path.join(self.work, f"row_{row.index:04d}_start.png"))
        try:
            file_info = self._generate(row, image, on_event)
            video, sbs = self.outputs(row)
            tmp = self.client.download(file_info, _partial(video))
        except ch.PromptError:
            raise
        except (ch.HeadlessError, OSError, TimeoutError) as e:
            raise ServerFault(f"{type(e).__name__}: {e}") from None
        os.replace(tmp, video)
        if sbs is not None:
            side_by_side(row.references[0][0], row.target_video, video, sbs)
        return RowResult(row.index, "done", time.monotonic() - started, video, sbs or "", server=self.name)

    def _generate(self, row: Row, image: str, on_event) -> dict:
        from .cli import apply_overrides
        client = self.client
        uploaded_image = client.upload(image)
        uploaded_refs = [client.upload(path) for path, _ in row.references]
        prompt = row_prompt(self.prompt, row, uploaded_image, uploaded_refs, f"vap_batch/row_{row.index:04d}")
        apply_overrides(prompt, self.args)
        try:
            result = client.run(prompt, timeout=self.args.timeout, on_event=on_event)
        except ch.PromptError as e:
            raise RowError(str(e)) from None          # the server refused this row's graph
        if result.status == "error":
            message = ch.describe_execution_error(result.error)
            if any(t in str((result.error or {}).get("exception_type", "")) for t in SERVER_FAULT_TYPES):
                raise ServerFault(message)
            raise RowError(message)                   # a node failed on this row's inputs
        if result.status != "success":
            raise ServerFault(f"the run ended as {result.status!r} (interrupted on the server?)")
        files = [f for f in result.output_files() if f["filename"].endswith((".mp4", ".webm", ".mov"))]
        if not files:
            raise RowError("the workflow finished but reported no video file")
        return files[-1]


class Scheduler:
    """A work queue over the servers: each takes the next row when free. A server fault puts the row back (for
    another server when one is left); a server that fails twice, or no longer answers, is dropped; a row's own
    error is recorded once. Rows still queued when no server is left end as ``left``."""

    MAX_ATTEMPTS = 3  # server faults one row may meet before it is given up (its error says so)

    def __init__(self, rows: list[Row], runners: list[RowRunner], progress: BatchProgress, results: list[RowResult],
                 stream=sys.stderr):
        self.queue, self.runners, self.progress, self.results = list(rows), list(runners), progress, results
        self.stream = stream
        self.live = {r.name for r in runners}
        self.in_flight = 0
        self.stopped = False
        self.faults: dict[int, list[str]] = {}      # row -> servers it failed on
        self.cond = threading.Condition()

    def say(self, text: str) -> None:
        with self.cond:
            self.stream.write(f"[batch] {text}\n")
            self.stream.flush()

    def _take(self, runner: RowRunner) -> Row | None:
        with self.cond:
            while not self.stopped:
                others = self.live - {runner.name}
                for i, row in enumerate(self.queue):
                    if runner.name not in self.faults.get(row.index, ()) or not others:
                        self.in_flight += 1
                        return self.queue.pop(i)
                if not self.queue and self.in_flight == 0:
                    return None
                self.cond.wait(0.5)  # a row in flight elsewhere may come back
            return None

    def _finish(self, result: RowResult | None = None, row: Row | None = None) -> None:
        with self.cond:
            self.in_flight -= 1
            if row is not None:
                self.queue.insert(0, row)
            else:
                self.results.append(result)
                self.progress.update(result)
            self.cond.notify_all()

    def work(self, runner: RowRunner) -> None:
        from .cli import Progress
        failures = 0
        prefix = f"[{runner.name}] " if len(self.runners) > 1 else ""
        while (row := self._take(runner)) is not None:
            started = time.monotonic()
            try:
                if not row.problem and runner.done_already(row):
                    video, sbs = runner.outputs(row)
                    self._finish(RowResult(row.index, "skipped", output=video, side_by_side=sbs or ""))
                    continue
                self.say(f"row {row.index} -> {runner.name}")
                self._finish(runner.run(row, on_event=Progress(runner.prompt, prefix=prefix)))
            except RowError as e:
                self._finish(RowResult(row.index, "failed", time.monotonic() - started, error=str(e),
                                       server=runner.name))
            except ServerFault as e:
                failures += 1
                tried = self.faults.setdefault(row.index, [])
                tried.append(runner.name)
                if len(tried) >= self.MAX_ATTEMPTS:
                    self._finish(RowResult(row.index, "failed", time.monotonic() - started, server=runner.name,
                                           error=f"server failures on {', '.join(tried)}; last: {e}"))
                else:
                    self.say(f"row {row.index}: server {runner.name} failed ({e}); the row goes back in the queue")
                    self._finish(row=row)
                if failures >= 2 or not runner.healthy():
                    self.say(f"server {runner.name} dropped: it failed {failures} time(s)"
                             + ("" if runner.healthy() else " and no longer answers"))
                    break
            except Exception as e:  # a bug of ours on this row: say so on the row, go on with the others
                self._finish(RowResult(row.index, "failed", time.monotonic() - started, server=runner.name,
                                       error=f"unexpected {type(e).__name__}: {e}"))
        with self.cond:
            self.live.discard(runner.name)
            self.cond.notify_all()

    def run(self) -> list[Row]:
        """Run every row; returns the rows left when no server remained."""
        threads = [threading.Thread(target=self.work, args=(r,), daemon=True, name=f"vap-batch-{r.name}")
                   for r in self.runners]
        for t in threads:
            t.start()
        try:
            while any(t.is_alive() for t in threads):
                for t in threads:
                    t.join(0.2)  # short joins: Ctrl-C / SIGTERM reach the main thread
        except KeyboardInterrupt:
            with self.cond:
                self.stopped = True
                self.cond.notify_all()
            raise
        return list(self.queue)


def write_summary(output_dir: str, results: list[RowResult]) -> tuple[str, str]:
    rows = [asdict(r) for r in sorted(results, key=lambda r: r.row)]
    for r in rows:
        r["seconds"] = round(r["seconds"], 2)
    csv_path, json_path = os.path.join(output_dir, "summary.csv"), os.path.join(output_dir, "summary.json")
    with open(csv_path + ".partial", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(csv_path + ".partial", csv_path)
    with open(json_path + ".partial", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    os.replace(json_path + ".partial", json_path)
    return csv_path, json_path


def main(args, prompt: dict, workflow_name: str) -> int:
    """``run.py --csv``: exit 0 when every row has its video, 1 when a row failed or was left, 2 for unusable
    arguments, 130 when interrupted."""
    from .cli import DEMO_NOTE, Session
    given = [f"--{name.replace('_', '-')}" for name in ("image", "reference_video", "prompt", "reference_prompt", "output")
             if getattr(args, name) is not None]
    if given:
        print(f"error: {', '.join(given)} cannot be combined with --csv (each row brings its own; use --output-dir)",
              file=sys.stderr)
        return 2
    if args.server and args.launch:
        print("error: give --server (running servers) or --launch N (servers started here), not both", file=sys.stderr)
        return 2
    if not os.path.isfile(args.csv):
        print(f"error: {args.csv} not found", file=sys.stderr)
        return 2
    try:
        rows = read_rows(args.csv, args.data_dir)
    except ch.HeadlessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    output_dir = os.path.abspath(args.output_dir or "vap_batch_output")
    os.makedirs(output_dir, exist_ok=True)
    for name in os.listdir(output_dir):  # leftovers of an interrupted run
        if ".partial" in name:
            os.remove(os.path.join(output_dir, name))
    print(f"batch: {len(rows)} row(s) from {args.csv} -> {output_dir}", file=sys.stderr)
    results: list[RowResult] = []
    left: list[Row] = []
    work = tempfile.mkdtemp(prefix="vap_batch_")
    try:
        with Session(args, prompt, work) as session:
            if not args.demo:
                from .cli import check_models
                for client in session.clients:
                    check_models(client, session.prompt, workflow_name)
            servers = session.servers or [None] * len(session.clients)
            runners = [RowRunner(args, session.prompt, client, output_dir, work, server=server)
                       for client, server in zip(session.clients, servers)]
            if len(runners) > 1:
                print(f"batch: {len(runners)} servers: {', '.join(r.name for r in runners)}", file=sys.stderr)
            scheduler = Scheduler(rows, runners, BatchProgress(len(rows)), results)
            try:
                left = scheduler.run()
            except KeyboardInterrupt:
                for client in session.clients:  # a --server keeps running: stop this batch's work there
                    try:
                        client.interrupt()
                    except OSError:
                        pass
                raise
    except KeyboardInterrupt:
        print("\ninterrupted: rows not finished keep no output; rerun the same command to resume.", file=sys.stderr)
        return 130
    except ch.HeadlessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        results += [RowResult(row.index, "left", error="no server left to run it") for row in left]
        if results:
            csv_path, _ = write_summary(output_dir, results)
            print(f"summary: {csv_path}", file=sys.stderr)
        shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in results if r.status in ("failed", "left")]
    for r in sorted(failed, key=lambda r: r.row):
        print(f"row {r.row} {r.status}: {r.error}", file=sys.stderr)
    if left:
        print(f"error: every server failed; {len(left)} row(s) left (rerun to resume)", file=sys.stderr)
    if args.demo:
        print(DEMO_NOTE, file=sys.stderr)
    return 1 if failed else 0
