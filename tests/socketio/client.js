// The Socket.IO 4 client with its default settings (long-polling first, then the upgrade
// to a WebSocket), against the URL in argv[2]. The CA comes from NODE_EXTRA_CA_CERTS, so
// the client's own options stay the defaults. Prints one JSON line and exits.
const { io } = require("socket.io-client");

const socket = io(process.argv[2]);
const seen = { first: null, upgraded: null, echoed: null };
let connected = false;
const done = (error) => {
  console.log(JSON.stringify({ ...seen, error: error || null }));
  socket.close();
  process.exit(error ? 1 : 0);
};
const echoOnceReady = () => {
  if (!connected || !seen.upgraded) return;
  socket.emit("echo", "hello over the upgrade", (answer) => {
    seen.echoed = answer;
    done();
  });
};
setTimeout(() => done("timed out"), 20000);
socket.on("connect_error", (e) => done(`connect_error: ${e.message}`));
socket.io.on("open", () => {
  const engine = socket.io.engine;
  seen.first = engine.transport.name;
  engine.once("upgrade", (transport) => {
    seen.upgraded = transport.name;
    echoOnceReady();
  });
});
socket.on("connect", () => {
  connected = true;
  echoOnceReady();
});
