"""Checks and fixtures' building blocks used by more than one test file."""
from __future__ import annotations

import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _cells(notebook: str) -> list[dict]:
    return json.loads((ROOT / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]


def check_panels_show_claims(notebook: str, panels) -> None:
    """Every panel of ``notebook`` has claims (≥ 3 seeds when stochastic, a control sentence) and the
    notebook renders them with ``claims_for(notebook, panel)``."""
    from lab.claims import claims_for

    claims = claims_for(notebook)
    assert {c.panel for c in claims} == set(panels)
    for claim in claims:
        assert claim.seed_field is None or claim.seeds >= 3, claim.id
        assert claim.control_text, claim.id
    code = "\n".join("".join(c["source"]) for c in _cells(notebook) if c["cell_type"] == "code")
    for panel in panels:
        assert f'claims_for("{notebook}", "{panel}")' in code, (notebook, panel)


def check_lesson_opening(notebook: str, headings) -> None:
    """After the first cell (how to start) and before the first code cell, a markdown cell with
    ``**What you will see.**``, each of ``headings``, ending on the check-yourself question."""
    cells = _cells(notebook)
    texts = ["".join(c["source"]) for c in cells]
    opening = next(i for i, t in enumerate(texts) if "**What you will see.**" in t)
    first_code = next(i for i, c in enumerate(cells) if c["cell_type"] == "code")
    assert 0 < opening < first_code and cells[opening]["cell_type"] == "markdown"
    for heading in headings:
        assert heading in texts[opening], (notebook, heading)
    assert texts[opening].rstrip().endswith("?"), "the check-yourself question ends the opening"


def arithmetic_tokenizer():
    """A BPE tokenizer (vocabulary 64, ``<pad>``/``<eos>``/``<unk>``) trained here on "a+b=c" text."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, trainers

    texts = [f"{a}+{b}={a + b}" for a in range(10) for b in range(10)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=64, special_tokens=["<pad>", "<eos>", "<unk>"],
                                                       show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                                unk_token="<unk>")
