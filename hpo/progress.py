"""Progress a person can follow: a tqdm bar per run (over its steps, with an ETA, when the trainer reports them),
one line per epoch or trial. `-q` silences it. See docs/ARCHITECTURE.md, "The trainer seam"."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from hpo.budget import budget_counts, used_finished
from model.config import TrainConfig
from model.train import EpochHook, total_epochs
from model.words import plural


def epoch_line(metrics: dict[str, Any], total: int) -> str:
    tf = metrics.get("teacher_forcing", 0.0)
    return (
        f"epoch {metrics['epoch'] + 1}/{total}  loss {metrics['train_loss']:.4f}  beta {metrics['beta']:.2f}  "
        f"tfr {metrics['tfr']:.2f}{' (TF)' if tf >= 0.5 else ''}  val PSNR {metrics['val_psnr']:.2f} dB  "
        f"{metrics['seconds']:.1f} s"
    )


def _bar(total: int, desc: str, unit: str, quiet: bool, initial: int = 0) -> tqdm:
    # smoothing=0: the rate is the run's average, evaluations between epochs included, so the ETA holds.
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit=unit,
        leave=False,
        disable=quiet,
        file=sys.stderr,
        dynamic_ncols=True,
        smoothing=0,
    )


class EpochBar:
    """A bar over a run: over its optimizer steps once the trainer reports them (pass `on_step` to `train`), with
    an ETA to the run's end; over its epochs otherwise (a study's trials). `lines` also prints one line per epoch
    (`hpo train`). `done` epochs of a resumed run are counted as done."""

    def __init__(self, total: int, desc: str, quiet: bool = False, lines: bool = False, done: int = 0) -> None:
        self.total, self.desc, self.lines, self.quiet = total, desc, lines, quiet
        self.epochs_done, self.steps = done, 0  # steps per epoch, once the trainer has said
        self.bar = _bar(total, desc, "ep", quiet, initial=done)

    def resumed(self, done: int) -> None:
        """The run resumes after `done` epochs (a retried trial): the bar starts there."""
        self.epochs_done = done
        self.bar.update(done - self.bar.n)

    def on_step(self, step: int, steps: int) -> None:
        """The trainer's step progress (model.train.StepHook): moves the bar within an epoch."""
        if steps != self.steps:  # the first step: from now on the bar counts the run's steps
            self.steps = steps
            self.bar.close()
            self.bar = _bar(self.total * steps, self.desc, "step", self.quiet, initial=self.epochs_done * steps)
        self.bar.update(self.epochs_done * steps + step - self.bar.n)

    def __call__(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.epochs_done = epoch + 1
        self.bar.update((self.epochs_done * self.steps if self.steps else self.epochs_done) - self.bar.n)
        shown = {"epoch": f"{epoch + 1}/{self.total}"} if self.steps else {}
        self.bar.set_postfix(shown | {"psnr": f"{metrics['val_psnr']:.2f}", "loss": f"{metrics['train_loss']:.4f}"})
        if self.lines and not self.quiet:
            self.bar.write(epoch_line(metrics, self.total), file=sys.stdout)

    def close(self) -> None:
        self.bar.close()


class CountBar:
    """A bar over a count that its first report sizes: `bar(done, total)`, e.g. `predict`'s rollout steps."""

    def __init__(self, desc: str, unit: str, quiet: bool = False) -> None:
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.bar: tqdm | None = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = _bar(total, self.desc, self.unit, self.quiet)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class RunBars:
    """A hook factory for a sequence of runs: one progress bar per run, the previous one closed first."""

    def __init__(self, quiet: bool, lines: bool = True) -> None:
        self.quiet, self.lines = quiet, lines
        self.bar: EpochBar | None = None

    def __call__(self, label: str, config: TrainConfig, done: int = 0) -> EpochHook:
        self.close()
        # a resumed run starts where its last.pt left off
        self.bar = EpochBar(total_epochs(config), label, quiet=self.quiet, lines=self.lines, done=done)
        return self.bar

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


class TrialPrinter:
    """Per-trial bar over epochs, one line per finished trial, a summary at the end (`hpo run`).

    With a `budget`, each trial's line starts with the study's progress, `[done/budget]`: trials finished for good
    by every worker (COMPLETE and PRUNED, as the budget counts them), not only by this one.
    """

    def __init__(
        self, study: Any, quiet: bool = False, label: str = "trial", show_best: bool = True, budget: int | None = None
    ) -> None:
        self.study, self.quiet, self.label, self.show_best, self.budget = study, quiet, label, show_best, budget
        self.bar: EpochBar | None = None

    def say(self, line: str) -> None:
        if not self.quiet:
            tqdm.write(line, file=sys.stdout)

    def epoch_hook(self, trial: Any, total: int) -> EpochBar:
        self.bar = EpochBar(total, f"{self.label} {trial.number}", quiet=self.quiet)
        return self.bar

    def trial_started(self, trial: Any) -> None:
        pass  # the bar appears with the first epoch hook

    def trial_finished(self, study: Any, frozen: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        state = frozen.state.name
        secs = frozen.user_attrs.get("seconds")
        value = (
            frozen.value
            if frozen.value is not None
            else (frozen.intermediate_values[max(frozen.intermediate_values)] if frozen.intermediate_values else None)
        )
        try:
            best = f"best {study.best_value:.2f} (#{study.best_trial.number})" if self.show_best else ""
        except ValueError:
            best = "best -"
        params = " ".join(f"{k}={_fmt(v)}" for k, v in frozen.params.items())
        reason = frozen.user_attrs.get("fail_reason", "")
        psnr = f"{value:.2f} dB" if value is not None else "-"
        done = ""
        if self.budget and not self.quiet:
            done = f"[{used_finished(budget_counts(study)):>{len(str(self.budget))}}/{self.budget}] "
        self.say(
            f"{done}{self.label} {frozen.number:>3} {state:<8} psnr {psnr:<9} {best}  "
            f"{(f'{secs:.1f} s' if secs is not None else ''):>8}  {params}" + (f"  [{reason}]" if reason else "")
        )

    def summary(self, best_value: Any, best_number: Any, best_params: dict, result: Any, seconds: float) -> None:
        line = (
            f"done: {plural(result.trials_run, 'trial')} here ({result.complete} complete, {result.pruned} pruned, "
            f"{result.failed} failed; stopped by {result.stopped}) in {seconds:.1f} s"
        )
        if best_value is not None:
            params = " ".join(f"{k}={_fmt(v)}" for k, v in best_params.items())
            line += f"; best val PSNR {best_value:.2f} dB (trial {best_number}): {params}"
        else:
            line += "; no complete trial yet"
        print(line, file=sys.stdout)
