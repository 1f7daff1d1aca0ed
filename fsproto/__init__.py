"""What the mxfs client (mxfs/) and the I/O server (server/) share; neither owns it.

    rpc      the RPC protocol: ops, match layout, codecs, stat fields, limits
    address  HOST:PORT parsing and the port each transport listens on
    secret   reading the shared secret from its file
    errors   OptionError (a bad setting) and leaf_exception (unwrapping trio's groups)

It stands on mxnet (the transport) and imports nothing from mxfs/ or server/
(tests/test_layering.py checks that).
"""
