'use strict';
// The test page's client: one WebSocket to the page's own URL (wss:// for https://),
// its state, what was negotiated, each echo's round-trip time, and the close.
(function () {
  const $ = (id) => document.getElementById(id);
  const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') +
    location.host + location.pathname + location.search;
  $('url').textContent = url;
  let ws = null;
  // When each message still waiting for its echo was sent (the echo keeps the order).
  let sentAt = [];

  function log(kind, text, note) {
    const item = document.createElement('li');
    item.className = kind;
    item.textContent = (kind === 'out' ? '\u2192 ' : kind === 'in' ? '\u2190 ' : '') + text;
    if (note) {
      const span = document.createElement('span');
      span.className = 'rtt';
      span.textContent = note;
      item.appendChild(span);
    }
    $('log').appendChild(item);
  }

  function state(name) {
    $('state').textContent = name;
    $('state').className = name;
  }

  function connect() {
    if (ws && ws.readyState < WebSocket.CLOSING) return;
    sentAt = [];
    state('connecting');
    $('protocol').textContent = '-';
    $('extensions').textContent = '-';
    $('closed').textContent = '-';
    const protocol = $('subprotocol').value.trim();
    try {
      ws = protocol ? new WebSocket(url, protocol) : new WebSocket(url);
    } catch (e) {
      state('closed');
      log('error', String(e));
      return;
    }
    ws.binaryType = 'arraybuffer';
    ws.onopen = () => {
      state('open');
      $('protocol').textContent = ws.protocol || '(none)';
      $('extensions').textContent = ws.extensions || '(none)';
      log('info', 'connected');
    };
    ws.onmessage = (event) => {
      const sent = sentAt.shift();
      const rtt = sent === undefined ? '' : (performance.now() - sent).toFixed(1) + ' ms';
      const text = typeof event.data === 'string' ? event.data : '[' + event.data.byteLength + ' bytes]';
      log('in', text, rtt);
    };
    ws.onerror = () => log('error', 'connection error (browsers give no detail here; see the console)');
    ws.onclose = (event) => {
      state('closed');
      $('closed').textContent = 'code ' + event.code +
        (event.reason ? ', reason "' + event.reason + '"' : '') +
        (event.wasClean ? '' : ' (not clean)');
      log('info', 'closed: ' + $('closed').textContent);
    };
  }

  function send() {
    if (!ws || ws.readyState !== WebSocket.OPEN) {
      log('error', 'not connected');
      return;
    }
    const text = $('message').value;
    sentAt.push(performance.now());
    ws.send(text);
    log('out', text);
  }

  function close() {
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    const code = Number($('code').value);
    try {
      ws.close(code, $('reason').value);
      state('closing');
    } catch (e) {
      log('error', String(e));
    }
  }

  $('send').addEventListener('click', send);
  $('message').addEventListener('keydown', (event) => { if (event.key === 'Enter') send(); });
  $('close').addEventListener('click', close);
  $('connect').addEventListener('click', connect);
  connect();
})();
