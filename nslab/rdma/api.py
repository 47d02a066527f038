"""The verbs names of the provider in use (see nslab.rdma.provider_info()).

    from nslab.rdma.api import Context, PD, MR, CQ, QP, QPInitAttr, QPCap, QPAttr, SendWR, RecvWR, SGE
    import nslab.rdma.enums as e

With the rxe provider these are pyverbs' own classes; with the soft provider
they come from nslab.rdma.soft, which follows pyverbs' names and signatures.
"""

from __future__ import annotations

from nslab.rdma import provider_info

PROVIDER = provider_info()["provider"] or "soft"

if PROVIDER == "rxe":  # pragma: no cover - needs an RDMA device
    from nslab.rdma.rxe import (  # noqa: F401
        CQ,
        MR,
        PD,
        QP,
        SGE,
        WC,
        AHAttr,
        Context,
        GlobalRoute,
        QPAttr,
        QPCap,
        QPInitAttr,
        RecvWR,
        SendWR,
    )
else:
    from nslab.rdma.soft import (  # noqa: F401
        CQ,
        MR,
        PD,
        QP,
        SGE,
        WC,
        AHAttr,
        Context,
        GlobalRoute,
        QPAttr,
        QPCap,
        QPInitAttr,
        RecvWR,
        SendWR,
        VerbsError,
    )
