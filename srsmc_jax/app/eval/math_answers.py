"""MATH answers: the boxed gold answer, the Minerva final-answer extraction and normalisation, and the
checks of equivalence: the two lm-evaluation-harness 0.4.8's ``minerva_math`` reports, and one of ours.

- ``exact_match``: :func:`is_equiv` of the normalised extracted answer and the normalised gold answer:
  SymPy's ``parse_latex`` of both (ANTLR runtime 4.11) and ``simplify(a - b) == 0``, within 5 s; any
  parse or simplify failure counts as not equal (so a gold answer that SymPy cannot parse, e.g. an
  interval, is never matched; that is lm-eval's behaviour and is kept).
- ``math_verify``: Hugging Face ``math_verify.verify(parse(gold), parse(completion))`` on the
  normalised gold answer and the WHOLE completion, with math-verify's default extraction (that is how
  lm-eval 0.4.8's ``process_results`` calls it). math-verify finds no expression in many bare gold
  strings (``3\\sqrt{13}``, ``\\pi``, ``6-5i``: 98 of MATH-500's 500 golds), and such a document
  is never matched (a known limitation, huggingface/Math-Verify issue 70); it is kept as lm-eval has it.

And one check of our own, not in lm-eval 0.4.8:

- ``math_equiv``: ``verify(parse("\\boxed{" + raw + "}"), parse(completion))`` with ``raw`` the
  solution's last boxed content BEFORE Minerva normalisation (which mangles e.g. ``\\left`` into
  ``\\le`` and ``\\infty`` into ``\\iny``). Every MATH test gold answer, written as a completion,
  is judged correct by it (tested), so it is the check to trust for comparing methods.

The substitution and removal lists and the regular expressions are those of Lewkowycz et al. (2022,
Minerva) appendix D as lm-eval 0.4.8 writes them in ``tasks/minerva_math/utils.py``; they are
reproduced exactly because a single character changes which answers match. All three checks use
``signal.alarm`` timeouts, so call them from the main thread.
"""

from __future__ import annotations

import re
import signal
from contextlib import contextmanager

INVALID_ANSWER = "[invalidanswer]"

# Minerva appendix D, in lm-eval 0.4.8's order (minerva_math/utils.py SUBSTITUTIONS).
SUBSTITUTIONS = (
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    (r"\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
)
# Minerva appendix D, in lm-eval 0.4.8's order (minerva_math/utils.py REMOVED_EXPRESSIONS).
REMOVED_EXPRESSIONS = (
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots",
    "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters",
    "meals", "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}",
    "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ",
    r"^{\circ}", r"\;", r",\!", "{,}", '"', "\\dots",
)
# lm-eval 0.4.8 get_unnormalized_answer (the "." is a regex wildcard there, and stays one here).
FINAL_ANSWER_PATTERN = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")
FINAL_ANSWER_END = "I hope it is correct."


def last_boxed_only_string(text: str) -> str | None:
    """The last ``\\boxed{...}`` (or ``\\fbox{...}``) of ``text`` with balanced braces, else None.

    As the MATH code that lm-eval 0.4.8 uses: if ``"\\boxed "`` (with a space) occurs anywhere, the
    answer is what follows its last occurrence up to the next ``$``."""
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for end in range(start, len(text)):
        if text[end] == "{":
            depth += 1
        elif text[end] == "}":
            depth -= 1
            if depth == 0:
                return text[start:end + 1]
    return None


def remove_boxed(boxed: str) -> str:
    """The content of ``\\boxed{...}`` / ``\\boxed ...`` (ValueError for anything else, e.g. fbox)."""
    if "\\boxed " in boxed:
        if not boxed.startswith("\\boxed "):
            raise ValueError(f"not a \\boxed answer: {boxed[:40]!r}")
        return boxed[len("\\boxed "):]
    if not (boxed.startswith("\\boxed{") and boxed.endswith("}")):
        raise ValueError(f"not a \\boxed{{}} answer: {boxed[:40]!r}")
    return boxed[len("\\boxed{"):-1]


def boxed_answer(solution: str) -> str:
    """The content of the solution's last box, as written."""
    boxed = last_boxed_only_string(solution)
    if boxed is None:
        raise ValueError("solution has no \\boxed answer")
    return remove_boxed(boxed)


def gold_answer(solution: str) -> str:
    """lm-eval's ``doc["answer"]``: the normalised content of the solution's last box."""
    return normalize_final_answer(boxed_answer(solution))


def extract_final_answer(completion: str) -> str:
    """The text between ``Final Answer: The final answer is`` and ``. I hope it is correct.``
    (stripped; the end phrase is appended first, so a completion cut before it still yields the
    rest), or ``[invalidanswer]``."""
    match = FINAL_ANSWER_PATTERN.search(completion + FINAL_ANSWER_END)
    return match.group(1).strip() if match else INVALID_ANSWER


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalisation of a final answer (appendix D, lm-eval 0.4.8's order of steps)."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    # Keep what is inside $...$, \text{}, \textbf{}, \overline{}, \boxed{}.
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    # Shorthand TeX: \fracab -> \frac{a}{b}, \sqrta -> \sqrt{a}.
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():  # 100,000 -> 100000
        answer = answer.replace(",", "")
    return answer


class _Timeout(Exception):
    pass


@contextmanager
def _alarm(seconds: int):
    def on_alarm(signum, frame):
        raise _Timeout()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def is_equiv(a: str, b: str, *, timeout_s: int = 5) -> bool:
    """lm-eval 0.4.8's ``is_equiv`` of two normalised answers: SymPy ``parse_latex`` both, then
    ``simplify(a - b) == 0``; False on any parse/subtract/simplify failure or after ``timeout_s``."""
    import sympy
    from sympy.parsing.latex import parse_latex

    try:
        with _alarm(timeout_s):
            try:
                difference = parse_latex(a) - parse_latex(b)
            except (sympy.parsing.latex.errors.LaTeXParsingError, sympy.SympifyError, TypeError):
                return False
            try:
                return bool(sympy.simplify(difference) == 0)
            except ValueError:
                return False
    except ImportError:
        raise  # a missing ANTLR runtime is a broken install, not a wrong answer
    except Exception:  # noqa: BLE001 - lm-eval counts every other failure (timeouts too) as unequal
        return False


def math_verify_equal(gold: str, completion: str) -> bool:
    """lm-eval 0.4.8's ``math_verify`` metric: ``verify(parse(gold), parse(completion))``."""
    from math_verify import parse, verify

    return bool(verify(parse(gold), parse(completion)))


def math_equiv(raw_gold: str, completion: str) -> bool:
    """``math_equiv``: math-verify with the unnormalised gold parsed as ``\\boxed{raw_gold}``."""
    from math_verify import parse, verify

    return bool(verify(parse("\\boxed{" + raw_gold + "}"), parse(completion)))
