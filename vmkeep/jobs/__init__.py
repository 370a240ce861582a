"""vmkeep's operations as plain functions ``job(spec, rt)``.

``spec`` is a typed, validated request (:mod:`vmkeep.jobs.specs`); ``rt`` is the runtime that
runs the job's steps (:mod:`vmkeep.runtime`): in-process for the CLI, Prefect for flows
(:mod:`vmkeep.flows` wraps each job in a thin flow).  A job never asks which runtime it has.
"""
