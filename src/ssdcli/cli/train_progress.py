"""`ssd train`'s progress on stderr: rich bars on a terminal, plain full-width lines elsewhere.

Both are :class:`ssdcli.train.Callbacks`, drawn by rank 0 only. Without a terminal (nohup, CI,
Slurm, a pipe) a bar cannot redraw and rich would cut it to 80 columns, so :class:`PlainCallbacks`
writes whole lines instead: one every :data:`PLAIN_STEP_PERCENT` % of an epoch and one per epoch,
each with the loss parts, images/s and the time left.
"""

from __future__ import annotations

import sys

from rich.markup import escape
from rich.table import Table
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ssdcli.cli.common import err
from ssdcli.train.eta import RunClock, format_duration
from ssdcli.wording import plural

PLAIN_STEP_PERCENT = 10
"""Without a terminal, a progress line each time an epoch passes another this many percent."""


def start_line(info: dict) -> str:
    """The line a run starts with (plain text, not markup)."""
    world = f" x{info['world_size']}" if info["world_size"] > 1 else ""
    return (
        f"training {plural(len(info['classes']), 'class')} on {plural(info['train_images'], 'image')}"
        + (f" (validating on {info['val_images']})" if info["val_images"] else "")
        + f", device {info['device']}{world}, AMP {'on' if info['amp'] else 'off'}, lr {info['lr']:.3g}"
        + f"; writing to {info['output']}"
        + (f"; resuming at epoch {info['start_epoch'] + 1} of {info['epochs']}" if info["start_epoch"] else "")
    )


def epoch_end_line(epoch: int, epochs: int, row: dict, run_eta: float | None) -> str:
    """The plain summary of a finished epoch: losses, validation, where the time went."""
    text = (f"epoch {epoch + 1}/{epochs} done: loss {row['train_loss']:.4f} (loc {row['train_loc']:.4f}, "
            f"conf {row['train_conf']:.4f})")
    if "val_map" in row:
        text += f", val loss {row['val_loss']:.4f}, VOC07 mAP {row['val_map']:.4f}"
    text += (f"; {row['epoch_seconds']:.0f} s (training {row['seconds']:.0f} s at {row['images_per_s']:.1f} img/s, "
             f"BatchNorm statistics {row['bn_seconds']:.0f} s, validation {row['val_seconds']:.0f} s, "
             f"checkpoints {row['save_seconds']:.0f} s)")
    if epoch + 1 < epochs:
        text += f"; run eta {format_duration(run_eta)}"
    return text


def init_table(init: dict) -> Table:
    """``--init``: which of the run's classes start from which of MODEL's (the rest start fresh)."""
    carried = init["carried"]
    kept = sum(row["from"] is not None for row in carried)
    table = Table(title=escape(f"--init {init['source']}: {kept} of {plural(len(carried), 'class')} carried over"))
    table.add_column("class")
    table.add_column("class head rows")
    for row in carried:
        source = row["from"]
        table.add_row(escape(row["class"]), "new (initialised)" if source is None else escape(f"from {source!r}"))
    return table


class _Common:
    """What both kinds share: the run's clock, the start line and warnings."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.epochs = 0
        self.clock = RunClock(1, 1)
        self.download = None

    def on_download(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if self.download is None:
            from ssdcli.cli.import_model import DownloadBar

            self.download = DownloadBar("the ImageNet backbone weights")
        self.download(done, total)
        if total is not None and done >= total:
            self.download.close()

    def on_start(self, info: dict) -> None:
        self.epochs = info["epochs"]
        self.clock = RunClock(info["epochs"], info["batches_per_epoch"])
        if self.enabled:
            if info.get("init"):
                err.print(init_table(info["init"]))
            if info.get("default_boxes"):
                self._print(info["default_boxes"])
            self._print(start_line(info))

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None:
        self.clock.epoch_started(epoch, first_batch)

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None:
        self.clock.batch_done(batch)

    def on_precise_bn_start(self, epoch: int, num_batches: int) -> None: ...

    def on_precise_bn_batch(self, epoch: int, batch: int) -> None: ...

    def on_validation_start(self, epoch: int, num_batches: int) -> None: ...

    def on_validation_batch(self, epoch: int, batch: int) -> None: ...

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        self.clock.epoch_done(row)

    def on_warning(self, message: str) -> None:
        if self.enabled:
            self._print(f"warning: {message}")

    def on_note(self, message: str) -> None:
        if self.enabled:
            self._print(message)

    def _print(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


class PlainCallbacks(_Common):
    """Whole lines on stderr, never cut or redrawn: for logs, pipes and batch systems."""

    def __init__(self, enabled: bool, step_percent: int = PLAIN_STEP_PERCENT) -> None:
        super().__init__(enabled)
        self.step = step_percent
        self.num_batches = 1

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None:
        super().on_epoch_start(epoch, num_batches, first_batch)
        self.num_batches = max(1, num_batches)

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None:
        super().on_batch_end(epoch, batch, stats)
        now, before = batch * 100 // self.num_batches // self.step, (batch - 1) * 100 // self.num_batches // self.step
        if not self.enabled or (now == before and batch < self.num_batches):
            return
        self._print(
            f"epoch {epoch + 1}/{self.epochs} {batch * 100 // self.num_batches:3d}% "
            f"(batch {batch}/{self.num_batches}): loss {stats['loss']:.4f} (loc {stats['loc']:.4f}, "
            f"conf {stats['conf']:.4f}), lr {stats['lr']:.2e}, {stats['images_per_s']:.1f} img/s, "
            f"epoch eta {format_duration(self.clock.epoch_eta())}, run eta {format_duration(self.clock.run_eta())}"
        )

    def on_precise_bn_start(self, epoch: int, num_batches: int) -> None:
        if self.enabled:
            self._print(f"epoch {epoch + 1}/{self.epochs}: BatchNorm statistics over {num_batches} batches of training images")

    def on_validation_start(self, epoch: int, num_batches: int) -> None:
        if self.enabled:
            self._print(f"epoch {epoch + 1}/{self.epochs}: validating ({num_batches} batches)")

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        super().on_epoch_end(epoch, row)
        if self.enabled:
            self._print(epoch_end_line(epoch, self.epochs, row, self.clock.run_eta()))


class RichCallbacks(_Common):
    """A rich progress bar per epoch on stderr (a terminal), with the epoch's and the run's ETA;
    precise BatchNorm statistics and validation get bars of their own."""

    def __init__(self, enabled: bool) -> None:
        super().__init__(enabled)
        self.progress: Progress | None = None
        self.task = None

    def on_epoch_start(self, epoch: int, num_batches: int, first_batch: int) -> None:
        super().on_epoch_start(epoch, num_batches, first_batch)
        if not self.enabled:
            return
        self.progress = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=err,
            transient=False,
        )
        self.progress.start()
        self.task = self.progress.add_task(
            "train", total=num_batches, completed=first_batch, epoch=f"{epoch + 1}/{self.epochs}", stats="",
            eta=f"{format_duration(None)}, run {format_duration(None)}",
        )

    def on_batch_end(self, epoch: int, batch: int, stats: dict) -> None:
        super().on_batch_end(epoch, batch, stats)
        if self.progress is not None:
            self.progress.update(
                self.task, completed=batch,
                stats=(f"loss {stats['loss']:.3f} (loc {stats['loc']:.3f}, conf {stats['conf']:.3f}) "
                       f"lr {stats['lr']:.2e} {stats['images_per_s']:.1f} img/s"),
                eta=f"{format_duration(self.clock.epoch_eta())}, run {format_duration(self.clock.run_eta())}",
            )

    def _add_bar(self, label: str, num_batches: int):
        return self.progress.add_task(label, total=num_batches, epoch=label, stats="", eta="")

    def on_precise_bn_start(self, epoch: int, num_batches: int) -> None:
        if self.progress is not None:
            self.bn_task = self._add_bar(f"{epoch + 1} BatchNorm", num_batches)

    def on_precise_bn_batch(self, epoch: int, batch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.bn_task, completed=batch)

    def on_validation_start(self, epoch: int, num_batches: int) -> None:
        if self.progress is not None:
            self.val_task = self._add_bar(f"{epoch + 1} val", num_batches)

    def on_validation_batch(self, epoch: int, batch: int) -> None:
        if self.progress is not None:
            self.progress.update(self.val_task, completed=batch)

    def on_epoch_end(self, epoch: int, row: dict) -> None:
        super().on_epoch_end(epoch, row)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.enabled:
            line = f"  epoch {epoch + 1}: {row['epoch_seconds']:.0f} s"
            if "val_map" in row:
                line += f", val loss {row['val_loss']:.3f}, VOC07 mAP {row['val_map']:.4f}"
            if epoch + 1 < self.epochs:
                line += f"; run eta {format_duration(self.clock.run_eta())}"
            err.print(escape(line), highlight=False)

    def on_warning(self, message: str) -> None:
        if self.enabled:
            target = self.progress.console if self.progress is not None else err
            target.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

    def _print(self, text: str) -> None:
        err.print(escape(text), highlight=False)


def progress_callbacks(enabled: bool) -> _Common:
    """Rich bars when stderr is a terminal, plain lines when it is not."""
    return RichCallbacks(enabled) if err.is_terminal else PlainCallbacks(enabled)
