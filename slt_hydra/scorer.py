"""Scoring a job's translations in a helper process, so that the scorer's imports do not hold up the job.

rouge-score imports all of NLTK, which imports scipy.stats and scikit-learn: about a second before the first split
can be scored (docs/benchmarks.md, section 3). A job starts the helper before it imports torch; the helper imports
them on the other core while the job imports torch and loads its model, then scores each split it is sent with
``metrics.score_corpus``, the same function, so the numbers are the same. Requests and replies are pickled over
the helper's stdin and stdout. One helper per process, kept for the next job of a sweep; it ends when the process
does (its stdin closes). Where the helper cannot start or dies, scoring runs in the job's own process.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from typing import Any

from slt_hydra.metrics import score_corpus


class Scorer:
    """``score(hypotheses, references, **options)``: ``metrics.score_corpus``, in the helper process."""

    def __init__(self) -> None:
        # The interpreter's own flags are not passed on (-X importtime lines stay the job's); a session of its own,
        # so a Ctrl-C in the terminal is the job's alone to handle (the helper ends when the job does)
        try:
            self.helper: subprocess.Popen | None = subprocess.Popen(
                [sys.executable, "-m", "slt_hydra.scorer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                start_new_session=True)
        except OSError:
            self.helper = None

    def score(self, hypotheses: list[str], references: list[str], **options: Any) -> dict:
        if self.helper is not None:
            try:
                pickle.dump((hypotheses, references, options), self.helper.stdin)
                self.helper.stdin.flush()
                done, value = pickle.load(self.helper.stdout)
            except (OSError, EOFError, pickle.UnpicklingError):  # the helper died: score here from now on
                self.close()
            else:
                if done:
                    return value
                raise value  # score_corpus refused the input: the same error as here
        return score_corpus(hypotheses, references, **options)

    def close(self) -> None:
        """End the helper (closing its stdin ends its loop)."""
        if self.helper is not None:
            helper, self.helper = self.helper, None
            for stream in (helper.stdin, helper.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                helper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                helper.kill()


_started: Scorer | None = None


def process_scorer() -> Scorer:
    """This process's scorer: its helper started on the first call, the same one after."""
    global _started
    if _started is None:
        _started = Scorer()
    return _started


def serve() -> None:
    """The helper: import the scorer's libraries, then score each request from stdin until it closes."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a library's print goes to stderr, not into the replies
    from rouge_score import rouge_scorer  # noqa: F401  (the import this process exists for)

    requests = sys.stdin.buffer
    while True:
        try:
            hypotheses, references, options = pickle.load(requests)
        except EOFError:
            return
        try:
            reply = (True, score_corpus(hypotheses, references, **options))
        except Exception as error:  # noqa: BLE001  (sent back and raised in the job)
            reply = (False, error)
        pickle.dump(reply, replies)
        replies.flush()


if __name__ == "__main__":
    serve()
