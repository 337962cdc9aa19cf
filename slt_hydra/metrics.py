"""Translation metrics: corpus BLEU-1..4, sentence-averaged ROUGE-L, corpus chrF.

Why the tokenizer is a parameter: sign-language-translation papers do not agree on
how text is tokenized before n-gram matching, and a BLEU number is only comparable
with numbers produced the same way.

- ``13a`` (sacrebleu's default, the WMT standard) for most spoken-language targets.
- ``zh`` for Chinese (e.g. CSL-Daily): every CJK character becomes a token, so the
  score is character-level. Uni-Sign's released CSL-Daily predictions reproduce
  their published BLEU only this way.
- ``none`` with ``lowercase=True`` for RWTH-PHOENIX-2014-T: its German references
  are already lowercased and tokenized, and PHOENIX papers score them as they are.

ROUGE-L uses the *same* tokenization as BLEU (then a whitespace split). The
rouge-score package's default tokenizer replaces every non ``[a-z0-9]`` character
with a space, which silently deletes German umlauts and every Chinese character.

Only sacrebleu and rouge-score are imported here (no torch) so that the scorer
CLI starts fast.
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Union

from sacrebleu.metrics import BLEU, CHRF

# rouge_score is imported inside score_corpus: it pulls in nltk and scipy (seconds),
# which would make every CLI error message slow.

#: Tokenizer names sacrebleu's BLEU accepts (some need optional extras, e.g. mecab, spm).
TOKENIZERS: List[str] = list(BLEU.TOKENIZERS)

__all__ = ["SCORES", "TOKENIZERS", "SacreTokenizer", "score_corpus", "perplexity"]

#: The scores every translated split gets, as metric-name suffixes (``test_bleu4``, ``dev_chrf``, ...).
SCORES = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL", "chrf")


class SacreTokenizer:
    """A rouge-score tokenizer (any object with ``tokenize(text) -> list``) that
    tokenizes exactly like sacrebleu's BLEU.

    It applies sacrebleu's own preprocessing for the chosen ``tokenize`` name
    (optional lowercasing, then the sacrebleu tokenizer) and splits on whitespace,
    so ROUGE-L sees the same tokens BLEU does.
    """

    def __init__(self, tokenize: str = "13a", lowercase: bool = False):
        self.name = tokenize
        self.lowercase = lowercase
        self._tok = BLEU(tokenize=tokenize).tokenizer

    def tokenize(self, text: str) -> List[str]:
        if self.lowercase:
            text = text.lower()
        return self._tok(text.rstrip()).split()


def _check_inputs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be lists of sentences, not a single string")
    if len(hypotheses) == 0 or len(references) == 0:
        raise ValueError(
            f"cannot score an empty corpus: got {len(hypotheses)} hypotheses and "
            f"{len(references)} references"
        )
    if len(hypotheses) != len(references):
        raise ValueError(
            f"hypotheses and references differ in length: {len(hypotheses)} hypotheses vs "
            f"{len(references)} references (one sentence per line, same order)"
        )
    for kind, seq in (("hypothesis", hypotheses), ("reference", references)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise ValueError(f"{kind} {i} is not a string but {type(s).__name__}")


def score_corpus(
    hypotheses: List[str],
    references: List[str],
    tokenize: str = "13a",
    lowercase: bool = False,
    tokenized: bool = False,
) -> Dict[str, Union[float, str]]:
    """Score a system output against one reference per sentence.

    Returns floats ``bleu1``..``bleu4`` (corpus BLEU with cumulative n-gram orders
    1..4, brevity penalty included), ``rougeL`` (ROUGE-L F1 x100, mean over
    sentences), ``chrf`` (corpus chrF), and the strings ``bleu_signature`` (of
    BLEU-4) and ``chrf_signature``. ``tokenized``: the corpus comes tokenized (punctuation spaced off), so
    sacrebleu's "forgot to detokenize" warning, which looks for exactly that, is not printed.
    """
    _check_inputs(hypotheses, references)
    if tokenize not in BLEU.TOKENIZERS:
        raise ValueError(f"unknown tokenize {tokenize!r}; choose one of: {', '.join(TOKENIZERS)}")
    hyps = list(hypotheses)
    refs = [list(references)]

    result: Dict[str, Union[float, str]] = {}
    bleu4 = None
    for n in range(1, 5):
        bleu = BLEU(max_ngram_order=n, tokenize=tokenize, lowercase=lowercase, force=tokenized)
        result[f"bleu{n}"] = float(bleu.corpus_score(hyps, refs).score)
        bleu4 = bleu

    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=SacreTokenizer(tokenize, lowercase))
    f1s = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, references)]
    result["rougeL"] = 100.0 * sum(f1s) / len(f1s)

    chrf = CHRF(lowercase=lowercase)
    result["chrf"] = float(chrf.corpus_score(hyps, refs).score)

    result["bleu_signature"] = str(bleu4.get_signature())
    result["chrf_signature"] = str(chrf.get_signature())
    return result


def perplexity(eval_loss: float) -> float:
    """Perplexity from a mean token cross-entropy (natural log); inf on overflow."""
    loss = float(eval_loss)
    if math.isnan(loss):
        return float("nan")
    try:
        return math.exp(loss)
    except OverflowError:
        return float("inf")
