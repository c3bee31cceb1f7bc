"""`checked_jit`: the entry point every public accelerated function goes through.

It runs the shared argument check of `ecdit.validate` (the one the reference calls), then the
jit-compiled body. Shapes are checked on every call (cheap, and static under jit); value checks
(non-finite inputs) run on concrete arrays and are skipped for tracers, i.e. when one public
function is called from inside another that has already checked its inputs.
"""
import functools
import inspect

import jax


def checked_jit(check, static_argnames=()):
    def wrap(fn):
        signature = inspect.signature(fn)
        jitted = jax.jit(fn, static_argnames=static_argnames)

        @functools.wraps(fn)
        def public(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            check(*bound.arguments.values())
            return jitted(*args, **kwargs)

        public.jitted = jitted          # the compiled body, for tests (cache size) and benchmarks
        return public
    return wrap
