"""Answer extraction and scoring: equal to lm-eval 0.4.8's on recorded cases, right on every gold answer,
wrong on perturbed ones; the pass@k estimator."""

import json
import math
from functools import lru_cache

import pytest
from shared_files import REPO, shared_dir

SHARED = shared_dir()

from srsmc_jax.app.eval import get_task, mean_pass_at_k, mean_scores, pass_at_k
from srsmc_jax.app.eval.gsm8k import FLEXIBLE_PATTERN, STRICT_PATTERN, extract
from srsmc_jax.app.eval.math_answers import boxed_answer, extract_final_answer, normalize_final_answer

FIXTURES = REPO / "tests" / "fixtures" / "lm_eval_0.4.8"
DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent (set SRSMC_SHARED)")


@lru_cache(maxsize=None)
def _task(name):
    task = get_task(name, DATA)
    return task, {d.key: d for d in task.documents()}


def _score_rows():
    with open(FIXTURES / "scores.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@needs_data
def test_scores_equal_lm_eval_on_recorded_completions():
    rows = _score_rows()
    assert {r["task"] for r in rows} >= {"gsm8k", "minerva_math500", "minerva_math_algebra"}
    for row in rows:
        task, docs = _task(row["task"])
        got = task.score(docs[(row["task"], row["doc_id"])], row["completion"])
        if row["task"] == "gsm8k":
            for name in ("strict-match", "flexible-extract"):
                assert got[name] == row["filtered"][name], row
                assert got[f"exact_match,{name}"] == row["metrics"][f"exact_match,{name}"], row
        else:
            assert got["exact_match"] == row["metrics"]["exact_match,none"], row
            assert got["math_verify"] == row["metrics"]["math_verify,none"], row
    # The recorded cases exercise both outcomes of every metric.
    for metric in ("exact_match,strict-match", "exact_match,flexible-extract", "exact_match,none",
                   "math_verify,none"):
        assert {r["metrics"][metric] for r in rows if metric in r["metrics"]} == {0.0, 1.0}, metric


def test_gsm8k_extraction_rules():
    assert extract("so #### 1,234.5 and #### 7", STRICT_PATTERN, 0) == "1,234.5"
    assert extract("no hashes, 42", STRICT_PATTERN, 0) == "[invalid]"
    assert extract("it costs $12 or 3 then 5.", FLEXIBLE_PATTERN, -1) == "5."
    assert extract("nothing", FLEXIBLE_PATTERN, -1) == "[invalid]"


def _perturbed_gsm8k(answer: str) -> str:
    body, final = answer.rsplit("#### ", 1)
    wrong = str(int(final.replace(",", "")) + 1)
    return " " + body + "#### " + wrong


@needs_data
def test_every_gsm8k_gold_answer_is_correct_and_a_perturbed_one_wrong():
    task, docs = _task("gsm8k")
    docs = list(docs.values())
    gold = task.score_batch([(d, " " + d.target) for d in docs])
    wrong = task.score_batch([(d, _perturbed_gsm8k(d.target)) for d in docs])
    assert mean_scores(gold, task.metrics) == {m: 1.0 for m in task.metrics}
    assert mean_scores(wrong, task.metrics) == {m: 0.0 for m in task.metrics}


def _math_gold_completion(doc) -> str:
    raw = boxed_answer(doc.fields["solution"])
    return " " + doc.fields["solution"] + f"\nFinal Answer: The final answer is ${raw}$. I hope it is correct."


def _math_perturbed_completion(doc) -> str:
    lhs, eq, rhs = boxed_answer(doc.fields["solution"]).rpartition("=")
    return f" Final Answer: The final answer is ${lhs}{eq}({rhs})+1$. I hope it is correct."


# Perturbed answers that a checker still judges equal (parser limits, not our code): found by the slow
# test over all 5,000 MATH test problems; none in MATH-500.
PERTURBED_STILL_EQUAL = {
    "math_verify": {("minerva_math_precalc", 85)},  # "2 + \sqrt{6}, 2 - \sqrt{6}"
    "math_equiv": {("minerva_math_geometry", 457),  # "\frac \pi4 + 2 - \sqrt2"
                   ("minerva_math_prealgebra", 469)},  # "111, \! 111, \! 111"
}


def _check_math_golds(task_name: str) -> None:
    task, docs = _task(task_name)
    docs = list(docs.values())
    gold = [task.score(d, _math_gold_completion(d)) for d in docs]
    wrong = [task.score(d, _math_perturbed_completion(d)) for d in docs]
    assert all(s["math_equiv"] == 1.0 for s in gold), [d.key for d, s in zip(docs, gold) if not s["math_equiv"]]
    for metric in task.metrics:
        still_equal = {d.key for d, s in zip(docs, wrong) if s[metric]}
        assert still_equal <= PERTURBED_STILL_EQUAL.get(metric, set()), (metric, still_equal)
    # lm-eval's own two checks miss some gold answers (kept as lm-eval has them): record how many.
    missed = {m: sum(1 - s[m] for s in gold) for m in ("exact_match", "math_verify")}
    assert missed["exact_match"] < 0.1 * len(docs) and missed["math_verify"] < 0.25 * len(docs), missed


@needs_data
def test_every_math500_gold_answer_is_correct_and_a_perturbed_one_wrong():
    _check_math_golds("minerva_math500")


@pytest.mark.slow
@needs_data
def test_every_math_gold_answer_is_correct_and_a_perturbed_one_wrong():
    _check_math_golds("minerva_math")


def test_minerva_normalisation_quirks_are_lm_evals():
    assert normalize_final_answer("\\$1,000") == "1000"
    assert normalize_final_answer("x = \\frac12") == "\\frac{1}{2}"
    assert normalize_final_answer("5 \\text{ inches}") == "5"
    assert normalize_final_answer("\\left(3, \\infty\\right)") == "\\le(3,\\iny\\right)"  # "ft" removed
    assert extract_final_answer("Final Answer: The final answer is $7$. I hope it is correct.") == "$7$"
    assert extract_final_answer("Final Answer: The final answer is $7$. ") == "$7$"  # cut by until
    assert extract_final_answer("Final Answer: The final answer is $7$") == "[invalidanswer]"
    assert extract_final_answer("The answer is 7.") == "[invalidanswer]"


def test_pass_at_k_estimator():
    assert pass_at_k(10, 0, 1) == 0.0 and pass_at_k(10, 10, 5) == 1.0
    assert math.isclose(pass_at_k(10, 3, 1), 0.3)
    assert math.isclose(pass_at_k(5, 2, 2), 1 - math.comb(3, 2) / math.comb(5, 2))
    assert math.isclose(pass_at_k(200, 13, 10), 1 - math.comb(187, 10) / math.comb(200, 10))
    assert pass_at_k(4, 1, 4) == 1.0  # n - c < k
    assert math.isclose(mean_pass_at_k([[True, False], [False, False]], 1), 0.25)
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


# --- linear-time extraction (issue 19) ------------------------------------------------------------
# lm-eval 0.4.8's regexes, verbatim: the linear rewrites must give their results on every text.
import random  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from srsmc_jax.app.eval.gsm8k import IGNORED_PATTERNS, _normalise_for_match, exact_match  # noqa: E402
from srsmc_jax.app.eval.math_answers import FINAL_ANSWER_END, last_boxed_only_string  # noqa: E402

LM_EVAL_FINAL = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def _lm_eval_normalise_gsm8k(text):
    for pattern in IGNORED_PATTERNS:
        text = re.sub(pattern, "", text)
    return text.lower()


def _lm_eval_normalize_math(answer):
    """lm-eval 0.4.8's normalize_final_answer with its regexes (the substitution lists are ours)."""
    from srsmc_jax.app.eval.math_answers import REMOVED_EXPRESSIONS, SUBSTITUTIONS

    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


_PIECES = ["$", "}", "{", "\n", "x", "1", ",", ".", " ", "#### ", "\\text{", "\\textbf{", "\\overline{",
           "\\boxed{", "frac", "sqrt", "Final Answer: The final answer is", " I hope it is correct", ". ", "=",
           "-", "5.", "#"]


def _random_texts(count, seed=19):
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randrange(0, 14))) for _ in range(count)]


def test_linear_extraction_equals_lm_evals_regexes_on_random_texts():
    for text in _random_texts(20000):
        assert _normalise_for_match(text) == _lm_eval_normalise_gsm8k(text), repr(text)
        want = LM_EVAL_FINAL.search(text + FINAL_ANSWER_END)
        want = want.group(1).strip() if want else "[invalidanswer]"
        assert extract_final_answer(text) == want, repr(text)
        assert normalize_final_answer(text) == _lm_eval_normalize_math(text), repr(text)
        for pattern, select in ((STRICT_PATTERN, 0), (FLEXIBLE_PATTERN, -1)):
            matches = pattern.findall(text)
            want = "[invalid]"
            if matches:
                match = matches[select]
                if isinstance(match, tuple):
                    match = next((g for g in match if g), "[invalid]")
                want = match.strip()
            assert extract(text, pattern, select) == want, repr(text)


MB = 1 << 20
PATHOLOGICAL = {  # about 1 MB each, the shapes that made the regexes quadratic
    "1,": "1," * (MB // 2),
    "1 ": "1 " * (MB // 2),
    "x": "x" * MB,
    "frac": "frac" * (MB // 4),
    "\\text{": "\\text{" * (MB // 6),
    "\\boxed{": "\\boxed{" * (MB // 7),
    "opening": "Final Answer: The final answer is" * (MB // 33),
    "opening x": ("Final Answer: The final answer is" + "x" * 67) * (MB // 100),
}


def _timed(f, *args):
    start = time.monotonic()
    value = f(*args)
    elapsed = time.monotonic() - start
    assert elapsed < 2.0, (f.__name__, elapsed)
    return value


@pytest.mark.parametrize("name", PATHOLOGICAL)
def test_extraction_is_fast_on_pathological_1mb_outputs(name):
    text = PATHOLOGICAL[name]
    flexible = _timed(extract, text, FLEXIBLE_PATTERN, -1)
    strict = _timed(extract, text, STRICT_PATTERN, 0)
    assert strict == "[invalid]"
    _timed(exact_match, flexible, "1")
    final = _timed(extract_final_answer, text)
    normalised = _timed(normalize_final_answer, final)
    boxed = _timed(last_boxed_only_string, text)
    whole = _timed(normalize_final_answer, text)
    unspaced = text.replace(" ", "")  # Minerva's substitutions drop spaces
    expected = {
        "1,": ("1," * (MB // 2), "1" * (MB // 2)),
        "1 ": ("1", unspaced),
        "x": ("[invalid]", text),
        "frac": ("[invalid]", re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", text)),  # this regex is linear
        "\\text{": ("[invalid]", text),
        "\\boxed{": ("[invalid]", text),
        "opening": ("[invalid]", unspaced),
        "opening x": ("[invalid]", unspaced),
    }[name]
    expected = (expected[0], "[invalidanswer]", None, expected[1])
    assert (flexible, final, boxed) == expected[:3]
    assert normalised == "[invalidanswer]"
    assert whole == expected[3]


def test_an_answer_after_a_pathological_prefix_is_still_found():
    text = ("Final Answer: The final answer is" * 20000 +
            "\nFinal Answer: The final answer is $7$. I hope it is correct.")
    assert _timed(extract_final_answer, text) == "$7$"
    assert _timed(normalize_final_answer, "\\text{" * 100000 + "\n\\boxed{42}") == "\\text{" * 100000 + "\n42"
    noisy = "1 " * 400000 + "#### 1,234"
    assert _timed(extract, noisy, STRICT_PATTERN, 0) == "1,234"
    assert _timed(exact_match, noisy, "1234") is True
