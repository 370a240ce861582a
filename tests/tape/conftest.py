from tests.tape.vtl_helpers import library, small_vtl, tape_dir, vtl  # noqa: F401
