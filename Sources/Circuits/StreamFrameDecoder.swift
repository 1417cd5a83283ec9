import NIOCore

/// A frame read from a byte stream: its header and its payload, a slice of what was read.
struct StreamFrame {
    var header: FrameHeader
    var payload: ByteBuffer
}

/// Frames back to back on a stream socket, as a channel transport reads them: each header
/// says how long its payload is, so a frame is complete once that many bytes followed it.
/// Every header is checked against the receiver's limits before its payload is waited for,
/// and a stream carries no descriptors, so a header that declares any is refused.
///
/// Each frame goes straight to its transport rather than down the pipeline: a frame is
/// larger than what NIO carries between handlers without a heap allocation of its own.
struct StreamFrameDecoder<Id: FixedWidthInteger & UnsignedInteger & Sendable>: ByteToMessageDecoder {
    typealias InboundOut = Never

    let limits: FrameLimits
    /// The frame's reader: owned by the pipeline (through `TransportHandler`), which holds this.
    unowned let transport: ChannelTransport<Id>

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let size = limits.headerSize
        guard buffer.readableBytes >= size else { return .needMoreData }
        let header = try buffer.withUnsafeReadableBytes { (bytes) throws(CircuitError) in
            try FrameHeader.decode(UnsafeRawBufferPointer(rebasing: bytes[..<size]), idBytes: limits.idBytes,
                                   maxCircuits: limits.maxCircuits, maxPayload: limits.maxPayload)
        }
        guard header.descriptorCount == 0 else {
            throw CircuitError.unexpectedDescriptors(count: header.descriptorCount, context: "a stream carries none")
        }
        guard buffer.readableBytes >= size + header.length else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: size)
        let payload = buffer.readSlice(length: header.length)!
        try transport.received(StreamFrame(header: header, payload: payload))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        // A peer that stops in the middle of a frame sent a truncated one.
        if buffer.readableBytes > 0 {
            throw CircuitError.truncatedStream(received: buffer.readableBytes)
        }
        return .needMoreData
    }
}
