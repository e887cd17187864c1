//! Bounded decompression of produced record batches.
//!
//! `kafka.batch_bytes_max` bounds what a client sends; this bounds what that
//! becomes. A few compressed bytes can claim gigabytes (a 5-byte xerial
//! snappy block header, a gzip stream of zeros), so every codec here stops
//! the moment its output would pass `kafka.batch_uncompressed_bytes_max`,
//! counted across every batch of one partition's records, or what is left
//! of the request's share (`kafka.request_bytes_max`, counted across all
//! its partitions), and allocates no
//! more than it has been able to decode: a length a header claims is checked
//! against the budget before anything is reserved for it.

use std::cell::Cell;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::records::Compression;

/// Why a batch could not be decompressed.
#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error(
        "record batch decompresses to more than kafka.batch_uncompressed_bytes_max ({max} bytes)"
    )]
    TooLarge { max: usize },
    #[error("the produce request's batches decompress to more than kafka.request_bytes_max ({max} bytes)")]
    RequestTooLarge { max: usize },
    #[error("{codec} data is corrupt: {why}")]
    Corrupt { codec: &'static str, why: String },
}

/// What all partitions of one produce request may still decompress to.
#[derive(Debug)]
pub struct RequestBudget {
    max: usize,
    left: AtomicUsize,
}

impl RequestBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(RequestBudget {
            max,
            left: AtomicUsize::new(max),
        })
    }

    /// What the request's batches decompressed to so far.
    pub fn used(&self) -> usize {
        self.max - self.left.load(Ordering::Relaxed)
    }
}

/// What one partition's batches may still decompress to.
#[derive(Debug)]
pub struct Budget {
    max: usize,
    left: Cell<usize>,
    request: Arc<RequestBudget>,
}

impl Budget {
    pub fn new(max: usize, request: Arc<RequestBudget>) -> Self {
        Budget {
            max,
            left: Cell::new(max),
            request,
        }
    }

    /// Bytes this partition may still decompress to, and the error that
    /// going past them is.
    fn room(&self) -> (usize, DecompressError) {
        let own = self.left.get();
        let request = self.request.left.load(Ordering::Relaxed);
        if request < own {
            (
                request,
                DecompressError::RequestTooLarge {
                    max: self.request.max,
                },
            )
        } else {
            (own, DecompressError::TooLarge { max: self.max })
        }
    }

    fn take(&self, n: usize) -> Result<(), DecompressError> {
        let (room, err) = self.room();
        if n > room {
            return Err(err);
        }
        let taken = self
            .request
            .left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(n));
        if taken.is_err() {
            return Err(DecompressError::RequestTooLarge {
                max: self.request.max,
            });
        }
        self.left.set(self.left.get() - n);
        Ok(())
    }

    /// Decompresses one batch's records, charging its output to the budget.
    pub fn decompress(&self, data: &Bytes, codec: Compression) -> Result<Bytes, DecompressError> {
        let out = match codec {
            Compression::None => data.clone(),
            Compression::Gzip => {
                self.read_all("gzip", flate2::read::MultiGzDecoder::new(&data[..]))?
            }
            Compression::Lz4 => {
                let d = lz4::Decoder::new(&data[..]).map_err(corrupt("lz4"))?;
                self.read_all("lz4", d)?
            }
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::new(&data[..]).map_err(corrupt("zstd"))?;
                d.window_log_max(zstd_window_log_max(self.max))
                    .map_err(corrupt("zstd"))?;
                self.read_all("zstd", d)?
            }
            Compression::Snappy => self.snappy(data)?,
        };
        self.take(out.len())?;
        Ok(out)
    }

    /// Reads a decoder to its end, never holding more than the budget
    /// allows plus one byte (which tells "exactly at the limit" from "over").
    fn read_all(&self, codec: &'static str, r: impl Read) -> Result<Bytes, DecompressError> {
        let (left, over) = self.room();
        let mut out = Vec::new();
        r.take((left as u64).saturating_add(1))
            .read_to_end(&mut out)
            .map_err(corrupt(codec))?;
        if out.len() > left {
            return Err(over);
        }
        Ok(out.into())
    }

    /// Snappy as Kafka clients write it: xerial framing (a 16-byte magic
    /// header, then blocks each prefixed by its big-endian compressed length)
    /// or, without the header, one raw snappy block.
    fn snappy(&self, data: &[u8]) -> Result<Bytes, DecompressError> {
        let bad = |why: &str| DecompressError::Corrupt {
            codec: "snappy",
            why: why.to_string(),
        };
        let (left, over) = self.room();
        let Some(mut blocks) = data.strip_prefix(&XERIAL_MAGIC[..]) else {
            let n = snap::raw::decompress_len(data).map_err(corrupt("snappy"))?;
            if n > left {
                return Err(over);
            }
            return snap::raw::Decoder::new()
                .decompress_vec(data)
                .map(Bytes::from)
                .map_err(corrupt("snappy"));
        };
        // Every block's claimed length is summed and checked before any
        // output buffer is sized from it.
        let mut out = Vec::new();
        while !blocks.is_empty() {
            if blocks.len() < 4 {
                return Err(bad("truncated block length"));
            }
            let (len, rest) = blocks.split_at(4);
            let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
            if len > rest.len() {
                return Err(bad("block is longer than the data left"));
            }
            let (block, rest) = rest.split_at(len);
            let n = snap::raw::decompress_len(block).map_err(corrupt("snappy"))?;
            if n > left - out.len() {
                return Err(over);
            }
            let start = out.len();
            out.resize(start + n, 0);
            let written = snap::raw::Decoder::new()
                .decompress(block, &mut out[start..])
                .map_err(corrupt("snappy"))?;
            out.truncate(start + written);
            blocks = rest;
        }
        Ok(out.into())
    }
}

/// The xerial snappy-java stream header Kafka's clients write.
const XERIAL_MAGIC: [u8; 16] = *b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";

/// The largest zstd window a frame may ask the decoder to allocate: enough
/// for every compression level a client uses by default (level 19 asks for
/// 2^23), and for a window as large as the budget itself, but never the
/// 2^27 (128 MiB) zstd would otherwise accept from a frame header.
pub fn zstd_window_log_max(max: usize) -> u32 {
    let need = usize::BITS - max.saturating_sub(1).leading_zeros();
    need.clamp(23, 27)
}

fn corrupt<E: std::fmt::Display>(codec: &'static str) -> impl Fn(E) -> DecompressError {
    move |e| DecompressError::Corrupt {
        codec,
        why: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap().into()
    }

    fn lz4(data: &[u8]) -> Bytes {
        let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
        e.write_all(data).unwrap();
        let (out, r) = e.finish();
        r.unwrap();
        out.into()
    }

    fn zstd(data: &[u8]) -> Bytes {
        zstd::encode_all(data, 3).unwrap().into()
    }

    fn xerial(data: &[u8]) -> Bytes {
        let mut out = XERIAL_MAGIC.to_vec();
        for chunk in data.chunks(32 * 1024) {
            let block = snap::raw::Encoder::new().compress_vec(chunk).unwrap();
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
        }
        out.into()
    }

    type Compress = fn(&[u8]) -> Bytes;

    fn codecs() -> Vec<(Compression, Compress)> {
        vec![
            (Compression::Gzip, gzip),
            (Compression::Lz4, lz4),
            (Compression::Zstd, zstd),
            (Compression::Snappy, xerial),
            (Compression::Snappy, |d| {
                snap::raw::Encoder::new().compress_vec(d).unwrap().into()
            }),
            (Compression::None, |d| Bytes::copy_from_slice(d)),
        ]
    }

    #[test]
    fn every_codec_round_trips_up_to_the_limit_exactly() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for (codec, compress) in codecs() {
            let budget = Budget::new(data.len(), RequestBudget::new(usize::MAX));
            let out = budget.decompress(&compress(&data), codec).unwrap();
            assert_eq!(&out[..], &data[..], "{codec:?}");
        }
    }

    #[test]
    fn every_codec_refuses_one_byte_over_the_limit() {
        let data = vec![0u8; 100_001];
        for (codec, compress) in codecs() {
            let budget = Budget::new(100_000, RequestBudget::new(usize::MAX));
            let e = budget.decompress(&compress(&data), codec).unwrap_err();
            assert!(
                matches!(e, DecompressError::TooLarge { max: 100_000 }),
                "{codec:?}: {e}"
            );
        }
    }

    #[test]
    fn the_budget_spans_every_batch_of_a_partition() {
        let data = vec![7u8; 60_000];
        let budget = Budget::new(100_000, RequestBudget::new(usize::MAX));
        budget.decompress(&zstd(&data), Compression::Zstd).unwrap();
        let e = budget.decompress(&gzip(&data), Compression::Gzip);
        assert!(matches!(e, Err(DecompressError::TooLarge { .. })));
    }

    #[test]
    fn the_request_budget_spans_its_partitions() {
        let data = vec![7u8; 60_000];
        let request = RequestBudget::new(100_000);
        let a = Budget::new(80_000, request.clone());
        let b = Budget::new(80_000, request);
        a.decompress(&zstd(&data), Compression::Zstd).unwrap();
        let e = b.decompress(&lz4(&data), Compression::Lz4).unwrap_err();
        assert!(
            matches!(e, DecompressError::RequestTooLarge { max: 100_000 }),
            "{e}"
        );
    }

    #[test]
    fn a_gigabyte_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros compresses to about 64 KiB; the decoder must stop
        // after max + 1 bytes, not inflate it all.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        let budget = Budget::new(1 << 20, RequestBudget::new(usize::MAX));
        let e = budget.decompress(&bomb, Compression::Gzip).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { .. }));
    }

    #[test]
    fn a_snappy_block_header_claiming_four_gigabytes_allocates_nothing() {
        // xerial header, one 5-byte block whose varint claims ~4 GiB.
        let mut bomb = XERIAL_MAGIC.to_vec();
        bomb.extend_from_slice(&5u32.to_be_bytes());
        bomb.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let budget = Budget::new(4 << 20, RequestBudget::new(usize::MAX));
        let e = budget
            .decompress(&bomb.into(), Compression::Snappy)
            .unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { .. }), "{e}");
        // The same claim as a raw snappy block.
        let raw = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let e = budget.decompress(&raw, Compression::Snappy).unwrap_err();
        assert!(matches!(e, DecompressError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn truncated_and_garbage_input_is_corrupt_not_a_panic() {
        let data = vec![1u8; 10_000];
        for (codec, compress) in codecs() {
            if codec == Compression::None {
                continue;
            }
            let c = compress(&data);
            for cut in [0, 1, 4, 16, 17, c.len() / 2] {
                let cut = cut.min(c.len());
                let r = Budget::new(1 << 20, RequestBudget::new(usize::MAX))
                    .decompress(&c.slice(..cut), codec);
                if let Ok(out) = r {
                    assert!(out.len() <= data.len());
                }
            }
        }
    }

    #[test]
    fn zstd_windows_are_capped() {
        assert_eq!(zstd_window_log_max(4 << 20), 23);
        assert_eq!(zstd_window_log_max(1), 23);
        assert_eq!(zstd_window_log_max((16 << 20) + 1), 25);
        assert_eq!(zstd_window_log_max(usize::MAX), 27);
    }
}
