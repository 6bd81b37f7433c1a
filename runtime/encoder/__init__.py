"""The encoder runtime: a policy compiled into a plan (plan.py), walked per input by the executor
(executor.py, steps.py) inside a session (session.py); whole-model packages run in whole_model.py."""
