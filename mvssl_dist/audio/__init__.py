"""Audio decoding (any common format -> float32 mono 16 kHz) and test-music synthesis."""

from mvssl_dist.audio.decode import AudioDecodeError, DecodedAudio, decode, decode_with_info, display_name

__all__ = ["AudioDecodeError", "DecodedAudio", "decode", "decode_with_info", "display_name"]
