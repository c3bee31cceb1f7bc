"""`checked_jit`: the entry point every public function of the JAX twin goes through.

    @checked_jit(contracts.router_affinity)
    def router_affinity(x, w_router): ...

On every call it runs the function's contract from `ecdit.core.contracts` through the decorator
the reference uses, `ecdit.core.checks.checked`, then the jit-compiled body. Shapes are
checked on every call (cheap, and static under jit); value checks (NaN and infinity, index
ranges) run on concrete arrays and are skipped for tracers, i.e. when one public function is
called from inside another that has already checked its inputs.

The wrapper exposes
  `.jitted`       the compiled body alone (benchmarks time it apart from the check);
  `.contract`     the contract it runs;
  `.trace_count()` how many times the body has been traced (compiled) so far: a public way for
                  tests to prove that a second call with the same shapes does not retrace.
"""
import functools

import jax

from ecdit.core.checks import Contract, checked


def checked_jit(contract: Contract, static_argnames=()):
    """Decorator: the reference's `checked(contract)` around the function jit-compiled with
    `static_argnames` static (they fix shapes, so each new value compiles once)."""
    def wrap(fn):
        traces = 0

        @functools.wraps(fn)
        def body(*args, **kwargs):
            nonlocal traces
            traces += 1                                          # runs once per trace, not per call
            return fn(*args, **kwargs)

        jitted = jax.jit(body, static_argnames=static_argnames)
        public = checked(contract)(jitted)                       # the one decorator both halves use
        public.jitted = jitted
        public.trace_count = lambda: traces
        return public
    return wrap
