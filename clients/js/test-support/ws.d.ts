// The one thing the README's Node snippet takes from `ws`: its WebSocket
// constructor (the snippet check has no @types/ws).
declare const WebSocket: new (url: string) => unknown;
export default WebSocket;
