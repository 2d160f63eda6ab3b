"""The lm-evaluation-harness wrapper (modlab.evaluation.harness) on a tiny random Llama with the
byte tokenizer: each request type equals the same quantity computed directly from the model's
logits, a local multiple-choice task (JSON + task YAML in tmp_path, nothing downloaded) runs
through lm-eval for two variants, and an unknown task is a one-line ConfigError."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import save_tiny_hf, write_mc_task

from modlab.data.text_tokenizer import ByteTokenizer
from modlab.errors import ConfigError
from modlab.evaluation.harness import harness_lm, run_harness, side_by_side, task_manager
from modlab.evaluation.harness_config import HarnessConfig
from modlab.models.hf_causal_lm import load_hf_causal_lm

pytest.importorskip("lm_eval")
from lm_eval.api.instance import Instance  # noqa: E402


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    model, _ = load_hf_causal_lm(str(save_tiny_hf(tmp_path_factory.mktemp("hf") / "llama")))
    return model


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))


def request(kind, *args):
    return Instance(kind, {}, args, 0)


def logprobs(lm, tokens):
    with torch.no_grad():
        return F.log_softmax(lm(torch.tensor(tokens[:-1])[None])[0], -1)


def test_loglikelihood_scores_the_continuation(lm):
    tok = ByteTokenizer()
    wrapped = harness_lm(lambda ids: lm(ids), tok, HarnessConfig())
    (score, greedy), (empty_ctx, _) = wrapped.loglikelihood(
        [request("loglikelihood", "Question: 2+2? Answer: ", "4"), request("loglikelihood", "", "ab")]
    )
    tokens = tok.encode("Question: 2+2? Answer: 4")  # the space moves to the continuation
    lp = logprobs(lm, tokens)
    want = lp[-2:].gather(1, torch.tensor(tokens[-2:])[:, None]).sum()
    assert score == pytest.approx(float(want), rel=1e-5)
    assert greedy == bool((lp[-2:].argmax(-1) == torch.tensor(tokens[-2:])).all())
    lp = logprobs(lm, [10, *tok.encode("ab")])  # an empty context starts from "\n" (no EOS in bytes)
    assert empty_ctx == pytest.approx(float(lp[0, ord("a")] + lp[1, ord("b")]), rel=1e-5)


def test_rolling_loglikelihood_is_every_token_predicted_once(lm):
    tok = ByteTokenizer()
    text = "the quick brown fox jumps over the lazy dog"
    tokens = [10, *tok.encode(text)]
    lp = logprobs(lm, tokens)
    want = float(lp.gather(1, torch.tensor(tokens[1:])[:, None]).sum())
    for max_length in (2048, 16):  # one window, and disjoint windows
        (got,) = harness_lm(lambda ids: lm(ids), tok, HarnessConfig(max_length=max_length)).loglikelihood_rolling(
            [request("loglikelihood_rolling", text)]
        )
        if max_length == 2048:
            assert got == pytest.approx(want, rel=1e-5)
        else:
            assert got < 0 and got != pytest.approx(want, rel=1e-5)  # less context per token


def test_generate_until_is_greedy_and_stops(lm):
    tok = ByteTokenizer()
    wrapped = harness_lm(lambda ids: lm(ids), tok, HarnessConfig())
    (text,) = wrapped.generate_until([request("generate_until", "Hello", {"until": [], "max_gen_toks": 5})])
    tokens = tok.encode("Hello")
    want = []
    with torch.no_grad():
        for _ in range(5):
            want.append(int(lm(torch.tensor(tokens + want)[None])[0, -1].argmax()))
    assert text == tok.decode(want)
    stop = tok.decode(want[2:3])
    (cut,) = wrapped.generate_until([request("generate_until", "Hello", {"until": [stop], "max_gen_toks": 5})])
    assert cut == tok.decode(want).split(stop)[0]


def test_a_local_task_runs_for_base_and_routed_side_by_side(lm, tmp_path):
    cfg = HarnessConfig(tasks=["tiny_mc"], include_path=str(write_mc_task(tmp_path / "tasks")))
    worse = lambda ids: -lm(ids)  # a model that prefers what the base finds least likely
    m = run_harness({"base": lambda ids: lm(ids), "routed": worse}, ByteTokenizer(), cfg)
    assert set(m) == {"harness/tiny_mc/acc_base", "harness/tiny_mc/acc_routed", "harness/tiny_mc/acc_delta"}
    assert 0 <= m["harness/tiny_mc/acc_base"] <= 1
    assert m["harness/tiny_mc/acc_delta"] == pytest.approx(
        m["harness/tiny_mc/acc_routed"] - m["harness/tiny_mc/acc_base"]
    )
    assert side_by_side(m)[0][0] == "tiny_mc/acc"


def test_an_unknown_task_is_a_one_line_error(tmp_path):
    with pytest.raises(ConfigError, match="lm-eval knows no task 'no_such_task'") as e:
        task_manager(HarnessConfig(tasks=["no_such_task"], include_path=str(tmp_path)))
    assert "\n" not in str(e.value)
