// The spec's useChatWebSocket hook (shared/spec/realtime-messaging.md, "Mobile (React Native)"),
// copied verbatim except for the URL's host, the module syntax (require/module.exports instead
// of import/export, so plain Node runs it) and React, which react_shim.js stands in for.
/* eslint-disable */
const { useEffect, useRef, useState } = require('./react_shim.js');

const useChatWebSocket = (userId) => {
  const ws = useRef(null);
  const [isConnected, setIsConnected] = useState(false);
  const [messages, setMessages] = useState([]);

  useEffect(() => {
    connectWebSocket();
    
    return () => {
      if (ws.current) {
        ws.current.close();
      }
    };
  }, [userId]);

  const connectWebSocket = () => {
    const token = getAuthToken(); // Your auth token function
    ws.current = new WebSocket(`${INDABA_WS_BASE}/ws/chat/?token=${token}`);

    ws.current.onopen = () => {
      console.log('WebSocket connected');
      setIsConnected(true);
    };

    ws.current.onmessage = (event) => {
      const data = JSON.parse(event.data);
      handleMessage(data);
    };

    ws.current.onerror = (error) => {
      console.error('WebSocket error:', error);
    };

    ws.current.onclose = () => {
      console.log('WebSocket closed');
      setIsConnected(false);
      // Reconnect after delay
      setTimeout(connectWebSocket, 3000);
    };
  };

  const handleMessage = (data) => {
    switch (data.type) {
      case 'new_message':
        setMessages(prev => [...prev, data]);
        // Send read receipt
        sendReadReceipt([data.message_id]);
        break;
      
      case 'typing_indicator':
        // Update typing state
        break;
      
      // ... handle other message types
    }
  };

  const sendMessage = (conversationId, receiverId, text) => {
    if (ws.current && ws.current.readyState === WebSocket.OPEN) {
      ws.current.send(JSON.stringify({
        type: 'chat_message',
        conversation_id: conversationId,
        receiver_id: receiverId,
        text: text
      }));
    }
  };

  const sendReadReceipt = (messageIds) => {
    if (ws.current && ws.current.readyState === WebSocket.OPEN) {
      ws.current.send(JSON.stringify({
        type: 'read_receipt',
        message_ids: messageIds
      }));
    }
  };

  return {
    isConnected,
    messages,
    sendMessage,
    sendReadReceipt
  };
};

module.exports = { useChatWebSocket };
