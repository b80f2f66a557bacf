import gc

from service.heap import freeze_startup_heap


def test_freeze_moves_live_objects_out_of_full_collections():
    before = gc.get_freeze_count()
    keep = [{"i": i} for i in range(1000)]  # tracked containers, alive across the freeze
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= before + len(keep)
        # A full collection no longer visits them: only objects created after the freeze are tracked.
        assert not any(obj is keep for obj in gc.get_objects(generation=2))
    finally:
        gc.unfreeze()  # back into generation 2, as before the test
    assert any(obj is keep for obj in gc.get_objects())
