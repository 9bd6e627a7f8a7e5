"""Schemathesis hooks for the contract fuzzing test (checker/tests/contract_fuzz.rs).

They supply, for positive cases only, the two rules of the contract that JSON Schema cannot
state (docs/api.md, "Contract fuzzing", says why the service keeps them):

- An integer is written as an integer literal: `42`, not `42.0`. JSON Schema counts `42.0` as
  an integer; the contract answers 422 (body) or 400 (query string) to it. An integral float
  generated for an integer field is written as the integer it equals.
- `POST /api/posts` names an existing timeline owner: `user_id` MUST be an existing user, or
  the answer is 422. A generated `user_id` is mapped onto the seeded users 1..=KATA_FUZZ_USERS.
  (The checker's `errors.problem_json` asserts the 422 for an unknown owner.)

Everything else stays as generated, so a schema-valid request the service rejects is still a
failure (ST202). Negative cases are left alone.
"""

import os

import schemathesis

USERS = int(os.environ["KATA_FUZZ_USERS"])


def integer_literal(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@schemathesis.hook
def map_case(context, case):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    if isinstance(case.query, dict):
        for name, value in case.query.items():
            case.query[name] = integer_literal(value)
    if case.operation.label == "POST /api/posts" and isinstance(case.body, dict):
        owner = integer_literal(case.body.get("user_id"))
        if type(owner) is int:
            case.body["user_id"] = 1 + owner % USERS
    return case
