"""How long a token check takes for the right token and for wrong ones (doppel.auth.token_matches).

A constant-time check takes the same time whatever is wrong with a guess of the same length:
its first byte or its last. Each case is the median of `--rounds` rounds of `--checks` checks
(the cases take turns within a round), beside a plain `==` for contrast; the spread is the
slowest same-length case over the fastest. A shared machine makes these noisy: they are
figures, never assertions. The last line is one JSON object with every figure.
Run: `.venv/bin/python bench/auth_timing.py [--checks N] [--rounds R]`."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

from doppel.auth import token_matches

TOKEN = "Bearer " + "k3Xq9vLm2PzR8tWc4YbN6hJd0FsGaE1u"  # what the interceptor expects, 39 characters


def cases() -> dict[str, str | None]:
    """The right token and the ways a guess can be wrong."""
    return {
        "right": TOKEN,
        "wrong first byte": "X" + TOKEN[1:],
        "wrong last byte": TOKEN[:-1] + "X",
        "one byte short": TOKEN[:-1],
        "much longer": TOKEN * 4,
        "missing": None,
    }


def per_check_ns(check: Callable[[str | None], bool], guesses: dict[str, str | None], checks: int,
                 rounds: int) -> dict[str, float]:
    """Per case, the median over `rounds` of the mean time of one check, in nanoseconds; the cases
    take turns within each round, so a busy moment of the machine falls on all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in guesses}
    for _ in range(rounds):
        for name, given in guesses.items():
            start = time.perf_counter_ns()
            for _ in range(checks):
                check(given)
            times[name].append((time.perf_counter_ns() - start) / checks)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20_000, help="checks per round")
    ap.add_argument("--rounds", type=int, default=15, help="rounds per case; the median is kept")
    args = ap.parse_args()

    def constant(given: str | None) -> bool:
        return token_matches(given, TOKEN)

    def plain(given: str | None) -> bool:
        return given == TOKEN

    constant_ns = per_check_ns(constant, cases(), args.checks, args.rounds)
    plain_ns = per_check_ns(plain, cases(), args.checks, args.rounds)
    figures = {name: {"token_matches_ns": constant_ns[name], "plain_eq_ns": plain_ns[name]} for name in cases()}
    right = figures["right"]["token_matches_ns"]
    print(f"{'case':<18} {'token_matches ns':>17} {'/ right':>8} {'plain == ns':>12}")
    for name, f in figures.items():
        f["ratio_to_right"] = f["token_matches_ns"] / right
        print(f"{name:<18} {f['token_matches_ns']:>17.1f} {f['ratio_to_right']:>8.3f} {f['plain_eq_ns']:>12.1f}")
    # A guess of the same length is what an attacker varies; "much longer" also hashes more bytes.
    same_length = [figures[n]["token_matches_ns"] for n in ("right", "wrong first byte", "wrong last byte")]
    spread = max(same_length) / min(same_length)
    print(f"spread among same-length guesses (slowest / fastest): {spread:.3f}")
    print(json.dumps({"checks": args.checks, "rounds": args.rounds, "cases": figures, "same_length_spread": spread}))


if __name__ == "__main__":
    main()
