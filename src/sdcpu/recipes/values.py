"""The parsers of recipe steps' values (`deepcache=2`, `openvino=bf16`, `fbcache=0.1`): each takes the text after `=`
and returns the value, or raises ValueError saying what it expects (the parser makes that a one-line usage error)."""


def count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError("a whole number >= 1")
    return int(text)


def guidance(text: str) -> float:
    value = float(text)
    if value < 0:
        raise ValueError("a number >= 0")
    return value


def scheduler(text: str) -> str:
    from sdcpu.models.schedulers import lookup

    return lookup(text) and text


TOME_MAX_RATIO = 0.75  # token merging pairs 3 source tokens of each 2x2 cell with its destination: at most 3/4 merge


def ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= TOME_MAX_RATIO:
        raise ValueError(f"a fraction in (0, {TOME_MAX_RATIO}]")
    return value


def threshold(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise ValueError("a relative change > 0")
    return value


def jemalloc_conf(text: str) -> str:
    if text != "default":
        raise ValueError("`default` (jemalloc's own configuration) or no value (the seed's MALLOC_CONF)")
    return text


STORED = ("bf16", "int8", "int4")  # the forms the weights step stores weights in (sdcpu.backends.weights)


def stored(text: str) -> str:
    if text not in STORED:
        raise ValueError(" or ".join(STORED))
    return text


def precision(text: str) -> str:
    if text not in ("f32", "bf16"):
        raise ValueError("f32 or bf16")
    return text
