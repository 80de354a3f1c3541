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

import bisect
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


def _final_answer_search(text: str) -> str | None:
    """``FINAL_ANSWER_PATTERN.search(text).group(1)`` (None: no match), in linear time.

    The regex retries its lazy ``(.*?)`` from every occurrence of the opening phrase to the end of its
    line, which is quadratic on a long line with many openings and no ending. The same match: the
    leftmost opening whose line holds, after it, an ending (any character but a newline, then
    `` I hope it is correct``, then any character but a newline); the group runs to the first such
    ending."""
    opening, middle = "Final Answer: The final answer is", " I hope it is correct"
    n = len(text)
    endings, at = [], text.find(middle, 1)  # q: where an ending's leading wildcard is
    while at >= 0:
        q, last = at - 1, at + len(middle)
        if last < n and text[q] != "\n" and text[last] != "\n":
            endings.append(q)
        at = text.find(middle, at + 1)
    i = text.find(opening)
    while i >= 0:
        start = i + len(opening)
        line_end = text.find("\n", start)
        line_end = n if line_end < 0 else line_end
        k = bisect.bisect_left(endings, start)
        if k < len(endings) and endings[k] < line_end:
            return text[start:endings[k]]
        if line_end == n:  # no later opening on this line can do better
            return None
        i = text.find(opening, line_end + 1)
    return None


def extract_final_answer(completion: str) -> str:
    """The text between ``Final Answer: The final answer is`` and ``. I hope it is correct.``
    (stripped; the end phrase is appended first, so a completion cut before it still yields the
    rest), or ``[invalidanswer]``. Linear time; the same result as lm-eval's
    ``FINAL_ANSWER_PATTERN.search``."""
    group = _final_answer_search(completion + FINAL_ANSWER_END)
    return group.strip() if group is not None else INVALID_ANSWER


def _lines(text: str):
    """``(start, end)`` of each line (end: its newline, or the end of the text)."""
    start, n = 0, len(text)
    while True:
        end = text.find("\n", start)
        if end < 0:
            yield start, n
            return
        yield start, end
        start = end + 1


def _keep_between_dollars(text: str) -> str:
    """``re.sub(r"(.*?)(\\$)(.*?)(\\$)(.*)", "$\\3$", text)`` in linear time: each line with two
    ``$`` or more becomes ``$`` + what is between its first two + ``$``."""
    out = []
    for start, end in _lines(text):
        first = text.find("$", start, end)
        second = text.find("$", first + 1, end) if first >= 0 else -1
        out.append(text[start:end] if second < 0 else "$" + text[first + 1:second] + "$")
    return "\n".join(out)


def _unwrap(text: str, opening: str, greedy: bool) -> str:
    """``re.sub(re.escape(opening) + "(.*?)}" or "(.*)}", r"\\1", text)`` without DOTALL, in linear
    time: ``opening`` ... ``}`` on one line (the first ``}`` if lazy, the last if greedy) becomes what
    is between them."""
    out, pos, n = [], 0, len(text)
    line_end = -1
    i = text.find(opening)
    while i >= 0:
        start = i + len(opening)
        if line_end < start:  # the end of the line the opening ends on (each line looked up once)
            line_end = text.find("\n", start)
            line_end = n if line_end < 0 else line_end
        close = (text.rfind if greedy else text.find)("}", start, line_end)
        if close < 0:  # no opening later on this line closes either
            if line_end == n:
                break
            i = text.find(opening, line_end + 1)
            continue
        out += [text[pos:i], text[start:close]]
        pos = close + 1
        i = text.find(opening, pos)
    out.append(text[pos:])
    return "".join(out)


def normalize_final_answer(answer: str) -> str:
    """Minerva's normalisation of a final answer (appendix D, lm-eval 0.4.8's order of steps)."""
    answer = answer.split("=")[-1]
    for before, after in SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expression in REMOVED_EXPRESSIONS:
        answer = answer.replace(expression, "")
    # Keep what is inside $...$, \text{}, \textbf{}, \overline{}, \boxed{}: lm-eval's
    #   re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    #   re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)     (and textbf, overline)
    #   re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    # written out in linear time (the regexes are quadratic on a long answer without a closing "$" or
    # "}"), with the same results (tests/test_eval_scoring.py compares them on random texts).
    answer = _keep_between_dollars(answer)
    answer = _unwrap(answer, "\\text{", greedy=False)
    answer = _unwrap(answer, "\\textbf{", greedy=False)
    answer = _unwrap(answer, "\\overline{", greedy=False)
    answer = _unwrap(answer, "\\boxed{", greedy=True)
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
