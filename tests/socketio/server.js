// A Socket.IO 4 app as its docs show it: an HTTP server with a page, and Socket.IO on it
// with its defaults. Prints the port it listens on, then one line per event it sees.
const http = require("http");
const { Server } = require("socket.io");

const app = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html" });
  res.end("<!doctype html><title>chat</title><p>the app's page</p>");
});
const io = new Server(app);
io.on("connection", (socket) => {
  const engine = socket.conn;
  console.log(`connection transport=${engine.transport.name}`);
  engine.on("upgrade", (transport) => console.log(`upgrade transport=${transport.name}`));
  socket.on("echo", (text, ack) => ack(`echo: ${text}`));
});
app.listen(0, "127.0.0.1", () => console.log(`port=${app.address().port}`));
