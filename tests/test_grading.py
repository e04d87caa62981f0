from bon_jax import grading


def test_extract_boxed_returns_last_box_with_nested_braces():
  text = r"first \boxed{1} then \boxed{\frac{1}{2}} done"
  assert grading.extract_boxed(text) == r"\frac{1}{2}"


def test_extract_boxed_accepts_fbox():
  assert grading.extract_boxed(r"\boxed{3} and \fbox{4}") == "4"


def test_extract_boxed_skips_an_unclosed_trailing_box():
  assert grading.extract_boxed(r"\boxed{7} then \boxed{8") == "7"


def test_extract_boxed_without_box_is_none():
  assert grading.extract_boxed("no answer here") is None
  assert grading.extract_boxed(r"\boxed{") is None
