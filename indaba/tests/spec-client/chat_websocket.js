// The spec's ChatWebSocket class (shared/spec/realtime-messaging.md, "Web (JavaScript/TypeScript)"),
// copied verbatim except for the URL's host, which points at the server under test.
/* eslint-disable */
class ChatWebSocket {
  constructor(userId) {
    this.userId = userId;
    this.ws = null;
    this.reconnectAttempts = 0;
    this.maxReconnectAttempts = 5;
  }

  connect() {
    // Get auth token from localStorage or cookie
    const token = localStorage.getItem('authToken');
    
    // Connect to WebSocket (include auth in URL or header)
    this.ws = new WebSocket(`${INDABA_WS_BASE}/ws/chat/?token=${token}`);
    
    this.ws.onopen = () => {
      console.log('WebSocket connected');
      this.reconnectAttempts = 0;
    };
    
    this.ws.onmessage = (event) => {
      const data = JSON.parse(event.data);
      this.handleMessage(data);
    };
    
    this.ws.onerror = (error) => {
      console.error('WebSocket error:', error);
    };
    
    this.ws.onclose = () => {
      console.log('WebSocket closed');
      this.reconnect();
    };
  }

  handleMessage(data) {
    switch (data.type) {
      case 'connection_established':
        console.log('Connected to chat server');
        break;
      
      case 'new_message':
        // Display new message in UI
        this.displayMessage(data);
        // Send read receipt
        this.sendReadReceipt([data.message_id]);
        break;
      
      case 'typing_indicator':
        // Show "User is typing..." indicator
        this.showTypingIndicator(data);
        break;
      
      case 'read_receipt':
        // Update message status to "Read"
        this.updateMessageStatus(data.message_ids, 'read');
        break;
      
      case 'message_sent':
        // Confirm message was sent
        this.updateMessageStatus([data.message_id], 'delivered');
        break;
      
      default:
        console.log('Unknown message type:', data.type);
    }
  }

  sendMessage(conversationId, receiverId, text) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({
        type: 'chat_message',
        conversation_id: conversationId,
        receiver_id: receiverId,
        text: text
      }));
    }
  }

  sendTypingIndicator(conversationId, receiverId, isTyping = true) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({
        type: 'typing_indicator',
        conversation_id: conversationId,
        receiver_id: receiverId,
        is_typing: isTyping
      }));
    }
  }

  sendReadReceipt(messageIds) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({
        type: 'read_receipt',
        message_ids: messageIds
      }));
    }
  }

  joinConversation(conversationId) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({
        type: 'join_conversation',
        conversation_id: conversationId
      }));
    }
  }

  leaveConversation(conversationId) {
    if (this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify({
        type: 'leave_conversation',
        conversation_id: conversationId
      }));
    }
  }

  reconnect() {
    if (this.reconnectAttempts < this.maxReconnectAttempts) {
      this.reconnectAttempts++;
      const delay = Math.min(1000 * Math.pow(2, this.reconnectAttempts), 30000);
      console.log(`Reconnecting in ${delay}ms...`);
      setTimeout(() => this.connect(), delay);
    } else {
      console.error('Max reconnection attempts reached');
      // Fallback to polling
      this.useFallbackPolling();
    }
  }

  useFallbackPolling() {
    // Fallback to REST API polling if WebSocket fails
    console.log('Falling back to REST API polling');
    setInterval(() => {
      fetch('/api/v1/messages/unread/')
        .then(res => res.json())
        .then(data => {
          // Handle new messages
        });
    }, 5000); // Poll every 5 seconds
  }

  disconnect() {
    if (this.ws) {
      this.ws.close();
    }
  }
}

module.exports = { ChatWebSocket };
