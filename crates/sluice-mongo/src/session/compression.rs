//! Compressed requests from a client (OP_COMPRESSED, once its hello agreed on a
//! compressor) and compressed replies to them: a reply uses the compressor of the request
//! it answers, except for the commands the Wire Compression spec keeps uncompressed.

use bytes::BytesMut;
use sluice_stats::ErrorKind;

use super::{MongoSessionError, Session};
use crate::wire::{
    compress, decompress, error_doc, Compressor, ErrorCode, Frame, OpCode, WireError,
};

impl Session {
    /// OP_COMPRESSED: decompressed (within the message limit in force) and handled as the
    /// message it holds, its reply compressed the same way. A message that cannot be
    /// decompressed is answered with an error, uncompressed; the stream stays in step.
    pub(super) async fn handle_compressed(
        &mut self,
        frame: &Frame,
    ) -> Result<(), MongoSessionError> {
        let request_id = frame.header.request_id;
        let opened = decompress(frame, self.decoder.max_len()).and_then(|d| {
            if d.compressor == Compressor::Noop || Some(d.compressor) == self.compressor {
                Ok(d)
            } else {
                Err(WireError::NotNegotiated(d.compressor))
            }
        });
        let inner = match opened {
            Ok(inner) => inner,
            Err(e) => {
                self.pool_error_count(ErrorKind::Protocol);
                tracing::debug!(error = %e, "refusing a compressed request");
                let code = match e {
                    WireError::UncompressedTooLarge { .. } => ErrorCode::BsonObjectTooLarge,
                    _ => ErrorCode::FailedToParse,
                };
                return self
                    .reply(request_id, &error_doc(code, e.to_string()))
                    .await;
            }
        };
        self.reply_with = Some(inner.compressor);
        let result = match inner.frame.header.op_code {
            OpCode::Msg => self.handle_msg(inner.frame).await,
            OpCode::Query => self.handle_legacy(&inner.frame).await,
            other => {
                self.reply_with = None;
                self.pool_error_count(ErrorKind::Protocol);
                let msg = format!("unsupported opCode {} inside OP_COMPRESSED", other.as_i32());
                self.reply(request_id, &error_doc(ErrorCode::FailedToParse, msg))
                    .await
            }
        };
        self.reply_with = None;
        result
    }

    /// Writes a whole reply message, compressed when it answers a compressed request.
    pub(super) async fn send(&mut self, msg: BytesMut) -> Result<(), MongoSessionError> {
        let Some(compressor) = self.reply_with else {
            return self.write(&msg).await;
        };
        let Some(frame) = Frame::from_bytes(msg) else {
            tracing::error!("a reply without a valid header");
            return Ok(());
        };
        match compress(&frame, compressor) {
            Ok(bytes) => self.write(&bytes).await,
            Err(e) => {
                tracing::warn!(error = %e, "sending a reply uncompressed");
                self.write(&frame.data).await
            }
        }
    }
}
