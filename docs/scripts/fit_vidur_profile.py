"""Fit ``tau = d0 + d1_prefill P + d1_context D`` to Vidur's per-operator profile of a model.

    python docs/scripts/fit_vidur_profile.py MLP_CSV ATTENTION_CSV [--layers 32] [--tp 1]
        [--old-d0 0.0276 --old-d1 1.15e-5]

MLP_CSV and ATTENTION_CSV are Vidur's ``data/profiling/compute/<gpu>/<model>/mlp.csv`` and
``attention.csv`` (github.com/microsoft/vidur, MIT license), or excerpts with the same
columns. Prints the fit (:func:`jaxsched.tools.vidur.fit_profile`), its error per kind of
iteration, and with ``--old-d0/--old-d1`` how a single-``d1`` profile's decode iterations
compare with the composed Vidur times.
"""

from __future__ import annotations

import argparse

import numpy as np

from jaxsched.tools import vidur


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mlp")
    ap.add_argument("attention")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--old-d0", type=float)
    ap.add_argument("--old-d1", type=float)
    args = ap.parse_args()
    samples = vidur.iteration_samples(vidur.read_mlp(args.mlp, args.tp),
                                      vidur.read_attention(args.attention, args.tp),
                                      args.layers)
    fit = vidur.fit_profile(samples)
    print(f"{fit.samples} iterations; d0 = {1e3 * fit.d0:.4f} ms, d1_prefill = "
          f"{1e6 * fit.d1_prefill:.3f} us, d1_context = {1e6 * fit.d1_context:.4f} us; "
          f"RMS {1e3 * fit.rms:.3f} ms ({fit.rel_rms:.1%} of the mean), mean |rel| "
          f"{fit.mean_abs_rel:.1%}")
    print(f"single d1: d0 = {1e3 * fit.single_d0:.4f} ms, d1 = {1e6 * fit.single_d1:.3f} us; "
          f"RMS {fit.single_rel_rms:.1%} of the mean, mean |rel| {fit.single_mean_abs_rel:.1%}")
    for kind in ("decode", "prefill"):
        sel = [s for s in samples if s.kind == kind]
        pred = np.array([fit.predict(s.prefill_tokens, s.context_tokens) for s in sel])
        t = np.array([s.seconds for s in sel])
        rel = np.abs(pred - t) / t
        print(f"  {kind}: {len(sel)} iterations, {1e3 * t.min():.2f}..{1e3 * t.max():.2f} ms, "
              f"mean |rel| {rel.mean():.1%}, max {rel.max():.1%}")
    prefill = [s for s in samples if s.kind == "prefill"]
    for s in prefill:
        print(f"  prefill of {s.tokens} tokens: {1e3 * s.seconds:.2f} ms, "
              f"{1e6 * s.seconds / s.tokens:.1f} us per token on average")
    if args.old_d0 is not None and args.old_d1 is not None:
        dec = [s for s in samples if s.kind == "decode"]
        ratio = np.array([(args.old_d0 + args.old_d1 * s.context_tokens) / s.seconds
                          for s in dec])
        print(f"  old tau = {args.old_d0:g} + {args.old_d1:g} (P + D) on the decode "
              f"iterations: {ratio.min():.1f}x..{ratio.max():.1f}x the Vidur time "
              f"(median {np.median(ratio):.1f}x)")
        for s, r in zip(dec, ratio):
            print(f"    decode b={s.batch} k={s.context}: Vidur {1e3 * s.seconds:.2f} ms, "
                  f"old {r:.1f}x, fit {fit.predict(0, s.context_tokens) / s.seconds:.2f}x")


if __name__ == "__main__":
    main()
