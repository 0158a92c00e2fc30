"""Device tokens verified from memory (CredentialCache) still die when the device
enrolls again: on the same server at once, on a replica by the store's notice."""

from __future__ import annotations

import pytest

from fleetcast.server.errors import Unauthenticated
from fleetcast.server.fleet import Enrollment, Fleet
from tests.integration.store.conftest import OpenStore
from tests.support.waiting import wait_for

ENROLL = "fleet-enroll-token"


def _enrollment(device_id: str) -> Enrollment:
    return Enrollment(device_id=device_id, hardware_class="x86-cpu", enroll_token=ENROLL)


def _refused(fleet: Fleet, token: str) -> bool:
    try:
        fleet.authenticate(token)
    except Unauthenticated:
        return True
    return False


def test_a_cached_token_is_refused_once_the_device_enrolled_again(open_store: OpenStore) -> None:
    fleet = Fleet(store=open_store(), enroll_token=ENROLL)
    old = fleet.enroll(_enrollment("cam-1"))
    assert fleet.authenticate(old) == "cam-1" and fleet.authenticate(old) == "cam-1"
    assert fleet.credentials.hits >= 1          # the second call was answered from memory

    fleet.approve_reprovision("cam-1")
    new = fleet.enroll(_enrollment("cam-1"))

    with pytest.raises(Unauthenticated, match="not valid"):
        fleet.authenticate(old)
    assert fleet.authenticate(new) == "cam-1"


def test_a_replica_refuses_the_old_token_after_another_replica_re_enrolled_the_device(
        open_replica_store: OpenStore) -> None:
    here = Fleet(store=open_replica_store(), enroll_token=ENROLL)
    there = Fleet(store=open_replica_store(), enroll_token=ENROLL)
    old = here.enroll(_enrollment("cam-2"))
    assert here.authenticate(old) == "cam-2" and there.authenticate(old) == "cam-2"
    assert there.authenticate(old) == "cam-2" and there.credentials.hits >= 1

    here.approve_reprovision("cam-2")
    new = here.enroll(_enrollment("cam-2"))

    wait_for(lambda: _refused(there, old), timeout_s=10, what="the replica to drop the old token")
    assert there.authenticate(new) == "cam-2"
