"""What a wanrt.v1 server and its clients agree on beyond the .proto: video format names, the size of a video
chunk, and the keepalive timings both ends configure. The client imports this, never the server's internals."""

from __future__ import annotations

MP4, RAW_RGB24 = "mp4", "raw_rgb24"  # the video formats a Generate call can ask for (VideoFormat)
VIDEO_FORMATS = (MP4, RAW_RGB24)

CHUNK_BYTES = 1 << 20  # largest VideoChunk.data the server sends
# Message size limits around a chunk: the server's send limit leaves room for the envelope, the client's
# receive limit for that and more (Result carries the identity map).
SERVER_SEND_BYTES = CHUNK_BYTES + 64 * 1024
CLIENT_RECEIVE_BYTES = CHUNK_BYTES + (1 << 20)

# Both ends ping an idle connection every minute and give it 20 s to answer, so a vanished peer (no FIN) is
# noticed. The server refuses pings more often than every 10 s (a client pinging faster is disconnected), so
# a client's keepalive time must stay above MIN_PING_INTERVAL_MS.
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
MIN_PING_INTERVAL_MS = 10_000
